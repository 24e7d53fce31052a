"""One seaborn theme, palette and figure geometry for every figure of the book.

Figures are drawn at the width of the book's text column (:data:`PAGE_WIDTH` inches at :data:`DPI`, about 680
pixels), so they are shown at their natural size and a 10 pt label stays 10 pt on the page. Use
:func:`panel_grid` (at most :data:`MAX_COLUMNS` panels per row) or :func:`figure_size` instead of ``figsize``
by hand.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "plasma"
#: Width of a page-wide figure in inches at :data:`DPI`: 682 px, so that it is shown at its natural size in the
#: text column (768 px at a 1400 px window) and in the key-result box (701 px).
PAGE_WIDTH = 6.2
DPI = 110
#: At most this many panels side by side at the page width.
MAX_COLUMNS = 3
#: The smallest font on a figure (tick labels, legends), in points at the displayed size.
MIN_FONT = 10


def set_theme() -> None:
    """The book's figure style: seaborn 'whitegrid', fonts of at least 10 pt, no top/right spines."""
    sns.set_theme(context="notebook", style="whitegrid",
                  rc={"figure.dpi": DPI, "savefig.dpi": DPI, "axes.spines.top": False,
                      "axes.spines.right": False, "figure.autolayout": False, "font.size": MIN_FONT,
                      "axes.titlesize": MIN_FONT + 1, "axes.labelsize": MIN_FONT, "xtick.labelsize": MIN_FONT,
                      "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT,
                      "legend.title_fontsize": MIN_FONT, "figure.titlesize": MIN_FONT + 2,
                      "figure.figsize": figure_size()})


def figure_size(width: float = 1.0, aspect: float = 0.62) -> tuple[float, float]:
    """(width, height) in inches for a figure ``width`` times the page width, height ``aspect`` x width."""
    if not 0 < width <= 1:
        raise ValueError(f"width: must be a fraction of the page width in (0, 1], got {width!r}")
    if not aspect > 0:
        raise ValueError(f"aspect: must be > 0, got {aspect!r}")
    w = PAGE_WIDTH * width
    return (w, w * aspect)


def ordered_colors(n: int, cmap: str = PALETTE) -> list:
    """n colours from the book's sequential palette, as the paper's plasma(0.1 + 0.2 i) (ordered: low to high)."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    cm = plt.get_cmap(cmap)
    if n == 1:
        return [cm(0.1)]
    return [cm(0.1 + 0.8 * i / (n - 1)) for i in range(n)]


def panel_grid(n: int, ncols: int = MAX_COLUMNS, aspect: float = 0.8, sharex: bool = False, sharey: bool = False):
    """A page-wide figure with n axes on ``ncols`` (<= 3) columns, each panel ``aspect`` as high as wide; extra
    axes are hidden. Returns (fig, list of axes)."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if not 1 <= ncols <= MAX_COLUMNS:
        raise ValueError(f"ncols: must be 1..{MAX_COLUMNS} (panels stay legible at the page width), got {ncols}")
    cols = min(ncols, n)
    nrows = -(-n // cols)
    panel = PAGE_WIDTH / cols
    fig, axes = plt.subplots(nrows, cols, figsize=(PAGE_WIDTH, panel * aspect * nrows), squeeze=False,
                             layout="constrained", sharex=sharex, sharey=sharey)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
