"""The landing page of the HTML report: what the run did and its main results, as reStructuredText.

Snakemake's report opens on the workflow description (the `report:` directive). After a run, the Snakefile
points that directive at the page written here, so the report opens on this run's headline table and the
verdicts of the paper claims instead of a generic text; links go to the report's own table pages.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import pandas as pd

from advneurons.report.findings import MASKING, VERDICTS, read_sections_json
from advneurons.runtime import atomic_path

# The landing page is a narrow column beside the rule graph: it shows these columns of the robustness table
# (those the run has) and links to the full tables.
HEADLINE_COLUMNS = ("Clean", "L-inf PGD", "AutoAttack", "C&W")

# The row of the verdict table that counts the extensions apart from the papers' claims.
EXTENSIONS = "extensions (counted apart)"

# Characters with a meaning in reStructuredText inline markup; escaped in every text taken from a result.
_RST_SPECIAL = "\\*`_|[]<>"


def rst_text(value) -> str:
    """`value` as inline reStructuredText that renders literally."""
    text = " ".join(str(value).split())
    return "".join("\\" + ch if ch in _RST_SPECIAL else ch for ch in text)


def rst_table(frame: pd.DataFrame, title: str, floatfmt: str = ".2f") -> list[str]:
    """A `list-table` directive of `frame` (header row from its columns; floats with `floatfmt`)."""
    lines = [f".. list-table:: {rst_text(title)}", "   :header-rows: 1", ""]
    rows = [list(frame.columns)] + frame.values.tolist()
    for row in rows:
        for j, cell in enumerate(row):
            if isinstance(cell, float):
                text = "" if pd.isna(cell) else format(cell, floatfmt)
            else:
                text = rst_text(cell)
            lines.append(f"   {'* -' if j == 0 else '  -'} {text}".rstrip())
    return lines + [""]


def verdict_counts(findings_json: Path) -> pd.DataFrame:
    """One row per findings topic: how many of the papers' claims read each verdict (VERDICTS order), a total
    ("all claims"), and last the extensions (claims on models the papers do not discuss), counted apart.

    A topic is a section title up to " — " (sections per model or architecture share one row), so the table
    stays short in the landing page's narrow column."""
    counts: dict[str, Counter] = {}
    extensions: Counter = Counter()
    for section in read_sections_json(findings_json):
        topic = section.title.split(" — ")[0]
        counts.setdefault(topic, Counter()).update(c.verdict for c in section.claims if not c.extension)
        extensions.update(c.verdict for c in section.claims if c.extension)
    rows = [{"section": topic, **{v: c.get(v, 0) for v in VERDICTS}} for topic, c in counts.items()]
    table = pd.DataFrame(rows, columns=["section", *VERDICTS])
    total = {"section": "all claims", **{v: int(table[v].sum()) for v in VERDICTS}}
    apart = {"section": EXTENSIONS, **{v: extensions.get(v, 0) for v in VERDICTS}}
    return pd.concat([table, pd.DataFrame([total, apart])], ignore_index=True)


def _heading(text: str, mark: str) -> list[str]:
    return [text, mark * len(text), ""]


def landing_page(
    dataset: str,
    seed: int,
    data_id: str,
    models: Sequence[str],
    defenses: Sequence[str],
    robustness_csv: Path | None = None,
    final_csv: Path | None = None,
    findings_json: Path | None = None,
    links: Sequence[str] = (),
) -> str:
    """The report's first page as reStructuredText.

    `links`: file names of report items (e.g. ``robustness.html``) to link under "Where to look"; each must be
    in the report, since a link to a missing item is a reStructuredText error."""
    lines = _heading("Neuron-level adversarial vulnerability: this run", "=")
    lines += [
        f"Dataset **{rst_text(dataset)}** (seed {int(seed)}; every intermediate under ``results/{rst_text(data_id)}/``, "
        "in folders named ``<name>~<hash of the settings that made it>``, each with a ``metadata.json`` of its "
        "settings, seed and package versions). Budgets are in 1/255 units of pixel intensity.",
        "",
        f"Analysed models: {rst_text(', '.join(models)) or 'none'}. "
        f"Defenses: {rst_text(', '.join(defenses)) or 'none'}.",
        "",
    ]
    if robustness_csv is not None:
        table = pd.read_csv(robustness_csv)
        shown = ["model", *[c for c in HEADLINE_COLUMNS if c in table.columns]]
        lines += _heading("Main result: robustness", "-")
        lines += rst_table(table[shown], "Accuracy (%) on the test split")
        rest = [c for c in table.columns if c not in shown]
        if rest:
            lines += [f"The full table adds {rst_text(', '.join(rest))} (TIP Table III layout; robustness.html below).", ""]
    if final_csv is not None:
        final = pd.read_csv(final_csv)
        lines += [f"Defenses: {len(final)} rows of models and defenses under the attack suite in final_robustness.html.", ""]
    if findings_json is not None:
        counts = verdict_counts(findings_json).set_index("section")
        total, apart = counts.loc["all claims"], counts.loc[EXTENSIONS]
        lines += _heading("Paper claims", "-")
        lines += [
            f"{int(sum(total[v] for v in VERDICTS))} claims of the papers checked on this run: "
            + ", ".join(f"{int(total[v])} {rst_text(v)}" for v in VERDICTS)
            + f". Extensions (the claims on models the papers do not discuss), counted apart: "
            f"{int(sum(apart[v] for v in VERDICTS))}: " + ", ".join(f"{int(apart[v])} {rst_text(v)}" for v in VERDICTS)
            + ". Every verdict comes from a stated test (findings.html gives each claim's rule); \"within noise\" "
            "means the data cannot tell, \"partly\" that a claim over several layers or classes holds in some "
            f"and fails significantly in none, and \"{rst_text(MASKING)}\" a defense gain that holds under "
            "white-box attack but not under transferred examples or AutoAttack (never counted as supported).",
            "",
        ]
        counts = counts.reset_index()
        lines += rst_table(counts, "Verdicts by section", floatfmt=".0f")
    if links:
        lines += _heading("Where to look", "-")
        lines += [f"- `{name}`_" for name in links] + [""]  # report item names: file names, no markup
        lines += [
            "Every table has an HTML page in this report and a CSV and Markdown file under ``results/``; every "
            "figure is a PNG with a PDF beside it. The captions say what each shows and how it was computed.",
            "",
        ]
    return "\n".join(lines)


def report_landing_page(out_rst: Path, **kwargs) -> str:
    """Write `landing_page(**kwargs)` to `out_rst`, fenced so that the report's Jinja pass leaves it as it is."""
    text = landing_page(**kwargs)
    with atomic_path(out_rst) as tmp:
        tmp.write_text("{% raw %}\n" + text + "\n{% endraw %}\n")
    return text
