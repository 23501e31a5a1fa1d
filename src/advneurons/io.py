"""Writing result tables: every CSV atomically (a killed job leaves no half-written file), and Markdown
tables with their HTML page beside them (report.markdown)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from advneurons.report.markdown import markdown_table, write_markdown
from advneurons.runtime import atomic_path


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """`path` ending in .gz: gzip-compressed (the temporary name hides the suffix from pandas' inference)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, compression="gzip" if str(path).endswith(".gz") else None)


def write_table(frame: pd.DataFrame, csv_path: Path | None = None, md_path: Path | None = None, title: str = "",
                notes: str = "", floatfmt: str = ".4g") -> None:
    """The frame as CSV (all digits) and/or as a Markdown table (`floatfmt`) under a title and notes."""
    if csv_path is not None:
        write_csv(frame, csv_path)
    if md_path is not None:
        text = (f"# {title}\n\n" if title else "") + (notes.strip() + "\n\n" if notes.strip() else "")
        write_markdown(md_path, text + markdown_table(frame, floatfmt) + "\n")
