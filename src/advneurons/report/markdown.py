"""Markdown tables whose numbers are formatted by this package, not by tabulate's defaults.

tabulate re-parses every cell and picks its own number format (which changed between releases: a float 0.0
prints as ``0`` in one and ``0.0`` in another), so a table built from the same frame read differently on
two machines. Here every float is turned into text with an explicit format first, and tabulate is told not
to parse the cells again.
"""

from __future__ import annotations

import html
import math
import numbers
from pathlib import Path

import markdown as markdown_lib  # Python-Markdown (PyPI); this module is advneurons.report.markdown
import pandas as pd

from advneurons.runtime import atomic_path

Format = str | dict[str, str]


def format_cell(value, fmt: str, missing: str) -> str:
    """One cell as text: floats with `fmt` (a format spec such as ".2f"), NaN/None as `missing`, the rest str()."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return missing if math.isnan(value) else format(value, fmt)
    if value is pd.NA or value is pd.NaT:
        return missing
    return str(value)


def interval_text(value: float, low: float, high: float, fmt: str = ".2f", bound_fmt: str = ".1f") -> str:
    """An estimate with its interval as one cell, "54.17 [34.3, 72.1]": both bounds, since a Wilson interval is
    not symmetric about the estimate (0 of 24 correct is [0.0, 13.8], which "± half-width" would misstate)."""
    return f"{format(value, fmt)} [{format(low, bound_fmt)}, {format(high, bound_fmt)}]"


def markdown_table(frame: pd.DataFrame, floatfmt: Format = ".2f", missing: str = "") -> str:
    """`frame` as a GitHub Markdown table; `floatfmt` is one format spec for every float column or a
    column -> spec mapping (columns left out use ".4g"). Integers print as integers, NaN as `missing`."""
    text = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        fmt = floatfmt.get(column, ".4g") if isinstance(floatfmt, dict) else floatfmt
        text[column] = [format_cell(v, fmt, missing) for v in frame[column]]
    return text.to_markdown(index=False, disable_numparse=True)


# ------------------------------------------------------------------------------------------------ HTML pages
# Snakemake's HTML report shows HTML files inline but offers CSV and Markdown only as downloads, so every
# Markdown table of the run also gets a self-contained HTML page beside it (same name, .html), which the rules
# mark for the report. One stylesheet for all pages: wide tables scroll instead of shrinking, numbers align.
PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 15px;
       line-height: 1.45; color: #1f2328; margin: 1.2em 1.6em; max-width: 110em; }
h1 { font-size: 1.45em; margin: 0.2em 0 0.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.65em; white-space: nowrap; }
th { background: #f3f5f7; position: sticky; top: 0; text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; font-weight: 600; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f3f5f7; padding: 0.05em 0.3em; border-radius: 3px; font-size: 0.92em; }
li { margin: 0.25em 0; } p { max-width: 60em; }
"""


def html_page(markdown_text: str, title: str | None = None) -> str:
    """A Markdown document (tables, lists, emphasis, code) as one self-contained HTML page.

    The title is the document's first `# heading` unless given."""
    if title is None:
        first = next((line for line in markdown_text.splitlines() if line.startswith("# ")), "")
        title = first[2:].strip() or "table"
    # tabulate marks every column left-aligned (cells are pre-formatted text); as an attribute, not an inline
    # style, that alignment yields to the stylesheet, which right-aligns numbers.
    converter = markdown_lib.Markdown(extensions=["tables", "sane_lists", "fenced_code"],
                                      extension_configs={"tables": {"use_align_attribute": True}},
                                      output_format="html")
    # Text from results ("p < 0.05", "<name>~<hash>", warnings) is text, never markup: no raw HTML passes.
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(markdown_text)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def html_path_of(md_path) -> Path:
    """Where the HTML page of a Markdown file goes: beside it, same name, `.html`."""
    return Path(md_path).with_suffix(".html")


def write_markdown(md_path, text: str) -> None:
    """Write a Markdown document and its HTML page beside it (`html_path_of`), both atomically."""
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    with atomic_path(html_path_of(md_path)) as tmp:
        tmp.write_text(html_page(text))
