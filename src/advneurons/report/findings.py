"""Paper claims checked against this run's numbers, rendered as Markdown (results/runs/<run>/findings.md).

A `Claim` states one finding of a paper, whether this run supports it (True / False / None when it could
not be checked) and the numbers behind the verdict. Claims come in titled `Section`s; any analysis can add
its own sections (build them in Python and pass them to `write_findings`, or write them to a JSON file with
`write_sections_json` and list that file among `extra_sections`), so new studies extend the findings file
without touching the code that writes the existing ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from advneurons.report.markdown import write_markdown
from advneurons.runtime import write_json


# What a claim's verdict can be. Every checked claim is decided by a stated test (its `rule`): "within noise" when
# the test cannot tell; "partly" when a claim over several units (layers, classes) holds significantly in some of
# them and significantly against in none; MASKING when a defense's gain shows under white-box attack but not under
# the transferred examples or AutoAttack (gradient masking, not robustness: never counted as supported).
MASKING = "gain under white-box attack only: gradient masking likely"
VERDICTS = ("supported", "partly", MASKING, "contradicted", "within noise", "not checked")

# The general decision rules, stated at the top of findings.md; each claim adds the rule that decided it.
GENERAL_RULES = (
    "How verdicts are decided (alpha 0.05 throughout; each claim's own rule follows it). Accuracy comparisons "
    "between two models use the same test images and an exact McNemar test (one-sided in the claimed direction) "
    "on the images one model gets right and the other wrong: supported if significant in the claimed direction, "
    "contradicted if significant against it, within noise otherwise. Where one claim covers several attack "
    "columns, layers or classes (units), each unit has its own test and the units are combined by Holm-Bonferroni "
    "at alpha 0.05 (never by pooling the same images as if independent): supported if every unit is significant "
    "in the claimed direction, partly if some are and none is significantly against, contradicted if any is "
    "significantly against, within noise if none is significant. Repeats (random channel draws, seeded "
    "trainings) are averaged per image, never counted as extra images. Other claims name their test in their rule "
    "(all from scipy): Wilcoxon signed-rank (per-channel sensitivities, overlaps against chance), the exact sign "
    "test (per-image means over repeats; units without a test of their own), the exact binomial test (an accuracy "
    "against a fixed threshold, hits against chance), Kendall's tau (trends over layers), Welch's t-test (layer "
    "means over their channels). A defense's claim to raise robustness "
    "is supported only when its gain is significant under white-box attack, under the adversarial examples "
    "transferred from its base model and under AutoAttack; a white-box gain that is not significant under "
    f"transfer or AutoAttack reads \"{MASKING}\". Claims marked as extensions test models the papers do not "
    "discuss and are counted apart."
)


@dataclass
class Claim:
    text: str  # the paper's claim as this run tests it
    supported: bool | None  # None: not checked, or within noise when `outcome` says so
    evidence: str  # the numbers behind the verdict (with the test statistic where one decided it)
    source: str = ""  # where the paper makes the claim, e.g. "TIP Fig 9"
    outcome: str | None = None  # one of VERDICTS; None: read from `supported`
    rule: str = ""  # the rule that decided the verdict, in words: test, threshold, direction, what was compared
    extension: bool = False  # the claim tests a model the papers do not discuss: counted apart

    def __post_init__(self):
        if self.outcome is not None and self.outcome not in VERDICTS:
            raise ValueError(f"claim {self.text!r}: outcome must be one of {', '.join(VERDICTS)}, got {self.outcome!r}")

    @property
    def verdict(self) -> str:
        if self.outcome is not None:
            return self.outcome
        return {True: "supported", False: "contradicted", None: "not checked"}[self.supported]

    @classmethod
    def decided(cls, text: str, verdict, evidence: str, source: str = "", rule: str = "",
                extension: bool = False) -> "Claim":
        """A claim decided by a test: `verdict` has a `label` (one of VERDICTS) and a `statistic` (e.g. an
        advneurons.evaluation.paired_stats.Verdict); `rule` defaults to the verdict's own `rule` where it has one."""
        supported = {"supported": True, "contradicted": False}.get(verdict.label)
        rule = rule or getattr(verdict, "rule", "")
        return cls(text, supported, f"{evidence}; {verdict.statistic}", source, verdict.label, rule, extension)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Claim":
        supported = data.get("supported")
        if supported not in (True, False, None):
            raise ValueError(f"claim {data.get('text')!r}: 'supported' must be true, false or null, got {supported!r}")
        return cls(
            text=str(data["text"]),
            supported=supported,
            evidence=str(data.get("evidence", "")),
            source=str(data.get("source", "")),
            outcome=data.get("outcome"),
            rule=str(data.get("rule", "")),
            extension=bool(data.get("extension", False)),
        )


@dataclass
class Section:
    title: str
    claims: list[Claim] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {"title": self.title, "note": self.note, "claims": [c.to_dict() for c in self.claims]}

    @classmethod
    def from_dict(cls, data: dict) -> "Section":
        return cls(
            title=str(data["title"]),
            note=str(data.get("note", "")),
            claims=[Claim.from_dict(c) for c in data.get("claims", [])],
        )


def verdict_counts(sections: Iterable[Section], extension: bool | None = False) -> dict[str, int]:
    """Claims per verdict: of the papers' own claims (extension=False, the default), of the extensions
    (True), or of all (None)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for section in sections:
        for claim in section.claims:
            if extension is None or claim.extension == extension:
                counts[claim.verdict] += 1
    return counts


def _count_line(counts: dict[str, int]) -> str:
    return "; ".join(f"{verdict} {n}" for verdict, n in counts.items())


def render_findings(sections: Sequence[Section], title: str = "Findings", preamble: str = "") -> str:
    """Markdown: a title, a count of verdicts, then one list of claims per section."""
    counts, extensions = verdict_counts(sections), verdict_counts(sections, extension=True)
    lines = [f"# {title}", ""]
    if preamble.strip():
        lines += [preamble.strip(), ""]
    lines += [
        f"Claims supported by this run: {counts['supported']} of the papers' {sum(counts.values())} claims "
        f"({_count_line(counts)}).",
        "",
        f"Extensions (the same claims on models the papers do not discuss), counted apart: {_count_line(extensions)}.",
        "",
        GENERAL_RULES,
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.note.strip():
            lines += [section.note.strip(), ""]
        if not section.claims:
            lines += ["(no claims)", ""]
        for claim in section.claims:
            source = f" ({claim.source})" if claim.source else ""
            marker = " *(extension)*" if claim.extension else ""
            lines.append(f"- **{claim.verdict}**{marker} — {claim.text}{source}. {claim.evidence}".rstrip())
            if claim.rule:
                lines.append(f"  - rule: {claim.rule}")
        lines.append("")
    return "\n".join(lines)


def write_sections_json(sections: Sequence[Section], path: Path) -> None:
    write_json({"sections": [s.to_dict() for s in sections]}, path)


def read_sections_json(path: Path) -> list[Section]:
    try:
        data = json.loads(Path(path).read_text())
        return [Section.from_dict(s) for s in data["sections"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a findings sections file: {exc}") from exc


def write_findings(
    sections: Sequence[Section],
    md_path: Path,
    json_path: Path | None = None,
    extra_sections: Sequence[Path] = (),
    title: str = "Findings",
    preamble: str = "",
) -> str:
    """Write the Markdown findings (and the sections as JSON), appending sections read from `extra_sections`."""
    all_sections = list(sections)
    for path in extra_sections:
        all_sections += read_sections_json(path)
    text = render_findings(all_sections, title, preamble)
    write_markdown(md_path, text)
    if json_path is not None:
        write_sections_json(all_sections, json_path)
    return text
