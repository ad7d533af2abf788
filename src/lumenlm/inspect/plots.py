"""Matplotlib on the headless Agg backend, and the one labelled heat map the analyses share.
Figures are written with `modelio.save_figure` (atomic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lumenlm.modelio import save_figure


def pyplot() -> Any:
    """matplotlib.pyplot on Agg (no display needed); imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(
    grid: list[list[float]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    xticks: list[str] | None = None,
    yticks: list[str] | None = None,
    colorbar: str = "",
    annotate: bool = True,
) -> None:
    """A heat map of `grid` (rows x columns) with each cell's value written in it."""
    plt = pyplot()
    rows, cols = len(grid), len(grid[0])
    fig, ax = plt.subplots(figsize=(max(5.5, 0.7 * cols + 2.5), max(2.8, 0.55 * rows + 2.0)))
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(cols), xticks if xticks is not None else [str(c) for c in range(cols)])
    ax.set_yticks(range(rows), yticks if yticks is not None else [str(r) for r in range(rows)])
    if annotate and rows * cols <= 400:
        for r in range(rows):
            for c in range(cols):
                v = grid[r][c]
                red, green, blue, _ = im.cmap(im.norm(v))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(
                    c,
                    r,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(colorbar)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
