"""Paper claims checked against this run's numbers, rendered as Markdown (results/findings.md).

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


# What a claim's verdict can be. Claims that compare accuracies on shared images are decided by a paired test
# (advneurons.evaluation.paired_stats) and may read "within noise"; a claim decided otherwise is supported or contradicted.
VERDICTS = ("supported", "contradicted", "within noise", "not checked")


@dataclass
class Claim:
    text: str  # the paper's claim as this run tests it
    supported: bool | None  # None: not checked, or within noise when `outcome` says so
    evidence: str  # the numbers behind the verdict (with the test statistic where one decided it)
    source: str = ""  # where the paper makes the claim, e.g. "TIP Fig 9"
    outcome: str | None = None  # one of VERDICTS; None: read from `supported`

    def __post_init__(self):
        if self.outcome is not None and self.outcome not in VERDICTS:
            raise ValueError(f"claim {self.text!r}: outcome must be one of {', '.join(VERDICTS)}, got {self.outcome!r}")

    @property
    def verdict(self) -> str:
        if self.outcome is not None:
            return self.outcome
        return {True: "supported", False: "contradicted", None: "not checked"}[self.supported]

    @classmethod
    def decided(cls, text: str, verdict, evidence: str, source: str = "") -> "Claim":
        """A claim decided by a paired test: `verdict` is an advneurons.evaluation.paired_stats.Verdict."""
        supported = {"supported": True, "contradicted": False}.get(verdict.label)
        return cls(text, supported, f"{evidence}; {verdict.statistic}", source, verdict.label)

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


def verdict_counts(sections: Iterable[Section]) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    for section in sections:
        for claim in section.claims:
            counts[claim.verdict] += 1
    return counts


def render_findings(sections: Sequence[Section], title: str = "Findings", preamble: str = "") -> str:
    """Markdown: a title, a count of verdicts, then one list of claims per section."""
    counts = verdict_counts(sections)
    lines = [f"# {title}", ""]
    if preamble.strip():
        lines += [preamble.strip(), ""]
    lines += [
        f"Claims supported by this run: {counts['supported']}; contradicted: {counts['contradicted']}; "
        f"within noise: {counts['within noise']}; not checked: {counts['not checked']}. Claims that compare "
        "accuracies are decided on the shared test images with an exact McNemar test (alpha 0.05) or a paired "
        "interval; the statistic follows each.",
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
            lines.append(f"- **{claim.verdict}** — {claim.text}{source}. {claim.evidence}".rstrip())
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
