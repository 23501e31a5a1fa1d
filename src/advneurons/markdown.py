"""Markdown tables whose numbers are formatted by this package, not by tabulate's defaults.

tabulate re-parses every cell and picks its own number format (which changed between releases: a float 0.0
prints as ``0`` in one and ``0.0`` in another), so a table built from the same frame read differently on
two machines. Here every float is turned into text with an explicit format first, and tabulate is told not
to parse the cells again.
"""

from __future__ import annotations

import math
import numbers

import pandas as pd

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


def markdown_table(frame: pd.DataFrame, floatfmt: Format = ".2f", missing: str = "") -> str:
    """`frame` as a GitHub Markdown table; `floatfmt` is one format spec for every float column or a
    column -> spec mapping (columns left out use ".4g"). Integers print as integers, NaN as `missing`."""
    text = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        fmt = floatfmt.get(column, ".4g") if isinstance(floatfmt, dict) else floatfmt
        text[column] = [format_cell(v, fmt, missing) for v in frame[column]]
    return text.to_markdown(index=False, disable_numparse=True)
