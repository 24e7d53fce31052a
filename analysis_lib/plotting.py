"""One seaborn theme and palette for every figure of the book."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "plasma"


def set_theme() -> None:
    """The book's figure style: seaborn 'whitegrid', readable fonts, no top/right spines."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95,
                  rc={"figure.dpi": 110, "savefig.dpi": 150, "axes.spines.top": False,
                      "axes.spines.right": False, "figure.autolayout": False})


def ordered_colors(n: int, cmap: str = PALETTE) -> list:
    """n colours from the book's sequential palette, as the paper's plasma(0.1 + 0.2 i) (ordered: low to high)."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    cm = plt.get_cmap(cmap)
    if n == 1:
        return [cm(0.1)]
    return [cm(0.1 + 0.8 * i / (n - 1)) for i in range(n)]


def panel_grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2)):
    """A figure with n axes laid out on ncols columns; extra axes are hidden. Returns (fig, axes list)."""
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, min(ncols, n), figsize=(size[0] * min(ncols, n), size[1] * nrows),
                             squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
