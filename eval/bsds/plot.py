"""Precision/recall curve figure in the BSDS style (iso-F contours, ODS points)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import BoundaryScores

__all__ = ["plot_pr_curves"]


def _iso_f(ax) -> None:
    """Draw the curves P = F R / (2R - F) of constant F, like BSR's plot_eval."""
    r = np.linspace(0.01, 1, 400)
    for f in np.arange(1, 10) / 10:
        with np.errstate(divide="ignore", invalid="ignore"):
            p = f * r / (2 * r - f)
        ok = (r > f / 2) & (p >= 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="0.8", lw=0.6, zorder=0)
        ax.annotate(f"{f:.1f}", (r[ok][-1], p[ok][-1]), fontsize=6, color="0.6")


def plot_pr_curves(
    results: Mapping[str, BoundaryScores], path: str | Path, title: str = "BSDS500"
) -> Path:
    """Save a PR plot of each method's ``curve`` (R on x, P on y) with its ODS point.

    results: {method name: BoundaryScores}; the legend shows ``[F=.788] name``. Rendered
    with the Agg canvas (no display, no pyplot state). Returns ``path``.
    """
    fig = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _iso_f(ax)
    for name, s in sorted(results.items(), key=lambda kv: -kv[1].ods):
        keep = s.curve[:, 1] > 0  # drop empty-recall thresholds
        (line,) = ax.plot(
            s.curve[keep, 1], s.curve[keep, 2], lw=1.5, label=f"[F={s.ods:.3f}] {name}"
        )
        ax.plot([s.ods_r], [s.ods_p], "o", color=line.get_color(), ms=4)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Recall", ylabel="Precision", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
