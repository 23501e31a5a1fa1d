"""Every figure of the package is set up and written here: one theme, PNG + PDF, and no unlabelled axes.

* `plotting()`: pyplot and seaborn on the Agg backend with the project theme (seaborn whitegrid, "notebook"
  context: the text stays readable when a ~10 inch wide figure is shown ~900 px wide in the HTML report;
  constrained layout, so nobody calls tight_layout).
* `grid(n_panels, ...)`: wraps what would be a 1 x N row of panels into rows of at most `max_cols`.
* `layer_ticks(ax, ...)`: a layer-name x axis that stays readable for a dozen or a hundred layers.
* `unlabelled_axes(fig)`: what keeps a figure from being written (missing axis labels, heatmaps without a
  labelled colorbar).
* `save_figure(fig, png_path)`: checks, then writes `png_path` and its `.pdf` sibling atomically, closes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from advneurons.runtime import atomic_path

PNG_DPI = 150
STYLE = "whitegrid"
CONTEXT = "notebook"
LAYER_LABEL = "layer (input → output)"
# At most this many 4-5 inch panels per row keep their text legible at the report's ~900 px width.
MAX_COLS = 3


def plotting():
    """(pyplot, seaborn) on the non-interactive backend (no display on workflow machines), themed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(
        style=STYLE,
        context=CONTEXT,
        rc={"figure.constrained_layout.use": True, "savefig.dpi": PNG_DPI, "legend.fontsize": "small",
            "legend.title_fontsize": "small", "figure.titlesize": "medium"},
    )
    return plt, sns


def grid(n_panels: int, max_cols: int = MAX_COLS, panel_size: tuple[float, float] = (3.8, 3.0), **subplot_kw):
    """A figure of `n_panels` panels in as few rows of at most `max_cols` as possible, the rows as even as they
    can be; returns (fig, list of the used axes, row by row).

    Spare axes of the last row are hidden; with sharex, the panels above a hidden one get their x tick labels
    back (pyplot only kept them on the bottom row)."""
    if n_panels < 1:
        raise ValueError(f"a grid needs at least one panel, got {n_panels}")
    if max_cols < 1:
        raise ValueError(f"max_cols must be at least 1, got {max_cols}")
    plt, _ = plotting()
    nrows = math.ceil(n_panels / max_cols)
    ncols = math.ceil(n_panels / nrows)  # balanced rows: 4 panels as 2 x 2, not 3 + 1
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False, **subplot_kw
    )
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    for i, ax in enumerate(flat[:n_panels]):
        if i + ncols >= n_panels:  # nothing visible below it
            ax.xaxis.set_tick_params(labelbottom=True)
    return fig, flat[:n_panels]


def figure_width(n_items: int, per_item: float = 0.32, minimum: float = 6.0, maximum: float = 12.0) -> float:
    """Width (inches) of a single-axes figure with `n_items` categories along x, capped for the report."""
    return min(maximum, max(minimum, per_item * n_items + 2.0))


def layer_ticks(ax, positions: Sequence[float], names: Sequence[str], label: str = LAYER_LABEL,
                max_labels: int = 40) -> None:
    """Layer names as rotated x tick labels (every k-th one beyond `max_labels`, the first and last kept)."""
    positions, names = list(positions), [str(n) for n in names]
    step = max(1, math.ceil(len(names) / max_labels))
    keep = [i for i in range(len(names)) if i % step == 0 or i == len(names) - 1]
    ax.set_xticks([positions[i] for i in keep])
    ax.set_xticklabels([names[i] for i in keep], rotation=60, ha="right", rotation_mode="anchor",
                       fontsize="small" if len(keep) > 12 else None)
    ax.set_xlabel(label if step == 1 else f"{label}; one in {step} named")


# ------------------------------------------------------------------------------------------------ checks
def _sup_label(fig, which: str) -> str:
    getter = getattr(fig, f"get_sup{which}label", None)  # matplotlib >= 3.8
    if getter is not None:
        return getter().strip()
    text = getattr(fig, f"_sup{which}label", None)
    return text.get_text().strip() if text is not None else ""


def _label(axis) -> str:
    return axis.label.get_text().strip() if axis.label.get_visible() else ""


def _is_colorbar(ax) -> bool:
    return hasattr(ax, "_colorbar") or ax.get_label() == "<colorbar>"


def _heatmaps(ax) -> list:
    """Colour-mapped data of an axes: 2-D images (not RGB pictures) and pcolormesh/sns.heatmap meshes."""
    from matplotlib.collections import QuadMesh

    found = [im for im in ax.images if np.ndim(im.get_array()) == 2]
    return found + [c for c in ax.collections if isinstance(c, QuadMesh)]


def _name(i: int, ax) -> str:
    title = ax.get_title() or ax.get_title(loc="left") or ax.get_title(loc="right")
    return f"axes {i}" + (f" ({title!r})" if title else "")


def unlabelled_axes(fig) -> list[str]:
    """What is unlabelled in `fig`, one description each; empty when the figure may be written.

    * a visible axes with data (lines, collections, patches, images) but no x or no y label; axes turned
      off with ``axis('off')`` (picture panels) are exempt, and a figure-level ``supxlabel`` / ``supylabel``
      labels that direction of every axes;
    * a heatmap (2-D image, pcolormesh, sns.heatmap) that no colorbar of the figure explains: one is needed
      for its own mappable or for one with the same colormap and limits;
    * a colorbar without a label.
    """
    sup = {"x": _sup_label(fig, "x"), "y": _sup_label(fig, "y")}
    colorbars = [ax._colorbar for ax in fig.get_axes() if hasattr(ax, "_colorbar")]
    problems = []
    for i, ax in enumerate(fig.get_axes()):
        if not ax.get_visible():
            continue
        if _is_colorbar(ax):
            cb = getattr(ax, "_colorbar", None)
            axis = (ax.yaxis if getattr(cb, "orientation", "vertical") == "vertical" else ax.xaxis)
            if not _label(axis):
                problems.append(f"{_name(i, ax)}: colorbar without a label")
            continue
        has_data = bool(ax.lines or ax.collections or ax.patches or ax.images)
        if has_data and ax.axison:
            missing = [d for d, axis in (("x", ax.xaxis), ("y", ax.yaxis)) if not (_label(axis) or sup[d])]
            if missing:
                problems.append(f"{_name(i, ax)}: no {' or '.join(missing)} label")
        for m in _heatmaps(ax):
            if getattr(m, "colorbar", None) is None and not any(_same_scale(m, cb.mappable) for cb in colorbars):
                problems.append(f"{_name(i, ax)}: heatmap without a colorbar")
                break
    return problems


def _same_scale(a, b) -> bool:
    return a.get_cmap().name == b.get_cmap().name and (a.norm.vmin, a.norm.vmax) == (b.norm.vmin, b.norm.vmax)


# ------------------------------------------------------------------------------------------------ saving
def pdf_path(png_path: Path) -> Path:
    """The PDF written beside a figure's PNG."""
    return Path(png_path).with_suffix(".pdf")


def save_figure(fig, png_path: Path) -> None:
    """Write `fig` to `png_path` (PNG) and its `.pdf` sibling, then close it.

    Refuses (ValueError, nothing written) a figure that `unlabelled_axes` objects to. Both files are written
    to temporary siblings first and only moved into place once both exist, so a failed save leaves neither
    half-written. The PDF has no creation date, so a rerun gives the same bytes."""
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    try:
        if png_path.suffix != ".png":
            raise ValueError(f"figure paths end in .png (the PDF goes beside it), got {png_path}")
        problems = unlabelled_axes(fig)
        if problems:
            raise ValueError(f"refusing to write figure {png_path}: " + "; ".join(problems))
        with atomic_path(png_path) as tmp_png, atomic_path(pdf_path(png_path)) as tmp_pdf:
            fig.savefig(tmp_png, format="png", dpi=PNG_DPI, bbox_inches="tight")
            fig.savefig(tmp_pdf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None})
    finally:
        plt.close(fig)
