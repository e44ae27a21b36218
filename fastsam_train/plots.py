"""The one home of pictures for people: mask overlays (``fastsam predict`` PNGs, validation
overlays during training, converted-shard renders) with cv2, and curves (BSDS precision /
recall, AR vs number of proposals) with matplotlib's Agg backend (no display needed).

Overlays are uint8 arrays; writing them is ``fastsam_train.io.atomic_write_image``'s job.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fastsam_train.data.labels import parse_label
from fastsam_train.images import decode_image

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 50_000_000  # a shard image is at most max_side^2 (~1 MP); the decoder's cap


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated BGR colours (golden-ratio hues)."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(g * 255), int(r * 255)))
    return colours


def draw_polygons(image: np.ndarray, polygons: list[np.ndarray], alpha: float = 0.45,
                  thickness: int = 2) -> np.ndarray:
    """Overlay filled (alpha) and outlined polygons on a BGR image (H, W, 3); returns a copy."""
    fill, out = image.copy(), image.copy()
    colours = palette(len(polygons))
    for poly, colour in zip(polygons, colours, strict=True):
        cv2.fillPoly(fill, [np.round(poly).astype(np.int32)], colour)
    cv2.addWeighted(fill, alpha, out, 1 - alpha, 0, dst=out)
    for poly, colour in zip(polygons, colours, strict=True):
        cv2.polylines(out, [np.round(poly).astype(np.int32)], True, colour, thickness)
    return out


def render_sample(sample: dict[str, bytes], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A webdataset sample (``jpg``, ``txt``) -> side-by-side BGR image: input | overlay (the
    JPEG through the one strict decoder, ``fastsam_train.images``)."""
    image = decode_image(sample["jpg"], max_pixels, name=sample["__key__"], color="bgr",
                         corrupt="warn")
    polygons = parse_label(sample["txt"].decode(), image.shape[:2])
    overlay = draw_polygons(image, polygons)
    label = f"{sample['__key__']}: {len(polygons)} masks"
    cv2.putText(overlay, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return np.concatenate([image, overlay], axis=1)


def mask_overlay(image: np.ndarray, masks: torch.Tensor, points: np.ndarray | None = None,
                 labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                 alpha: float = 0.5, contours: bool = True) -> np.ndarray:
    """RGB uint8 (H, W, 3) + bool masks (n, H, W) -> RGB uint8 with every mask tinted (largest
    first, so small masks stay visible on top), outlined, and the prompts drawn: points (p, 2)
    green (label 1) / red (label 0), boxes (b, 4) xyxy in blue."""
    out = image.astype(np.float32)
    masks = masks.cpu().numpy()
    colours = np.array([c[::-1] for c in palette(len(masks))], np.float32).reshape(-1, 3)
    order = np.argsort(-masks.sum((1, 2)), kind="stable")
    label = np.full(image.shape[:2], -1, np.int32)
    for k in order:
        label[masks[k]] = k
    hit = label >= 0
    out[hit] = (1 - alpha) * out[hit] + alpha * colours[label[hit]]
    out = out.clip(0, 255).astype(np.uint8)
    if contours:
        for k in order:
            found, _ = cv2.findContours(masks[k].astype(np.uint8), cv2.RETR_EXTERNAL,
                                        cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, found, -1, colours[k].tolist(), 1)
    for box in [] if boxes is None else np.asarray(boxes).reshape(-1, 4):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (40, 90, 255), 2)
    if points is not None:
        labels = np.ones(len(points)) if labels is None else labels
        for (x, y), lab in zip(np.asarray(points).reshape(-1, 2), labels, strict=True):
            colour = (40, 220, 40) if lab == 1 else (230, 40, 40)
            cv2.circle(out, (int(round(x)), int(round(y))), 5, colour, -1)
            cv2.circle(out, (int(round(x)), int(round(y))), 5, (255, 255, 255), 1)
    return out


def top_mask_overlay(img: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor,
                     top: int = 30) -> np.ndarray:
    """RGB uint8 (3, H, W) image + (n, h, w) masks -> RGB (H, W, 3) with the top masks drawn."""
    image = img.permute(1, 2, 0).cpu().numpy().copy()
    order = scores.argsort(descending=True)[:top].cpu().numpy()
    colours = palette(len(order))
    out = image.astype(np.float32)
    for colour, k in zip(colours, order, strict=True):
        mask = cv2.resize(masks[k].cpu().numpy(), image.shape[1::-1],
                          interpolation=cv2.INTER_NEAREST).astype(bool)
        out[mask] = 0.5 * out[mask] + 0.5 * np.array(colour[::-1], np.float32)
    return out.clip(0, 255).astype(np.uint8)


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
    results: Mapping[str, Any], path: str | Path, title: str = "BSDS500"
) -> Path:
    """Save a PR plot of each method's ``curve`` (R on x, P on y) with its ODS point.

    results: {method name: ``eval.bsds.BoundaryScores``} (``curve`` (T, 4) rows of threshold,
    R, P, F; ``ods``, ``ods_r``, ``ods_p``); the legend shows ``[F=.788] name``. Rendered
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


def plot_ar_curves(curves: dict[str, tuple], path: str | Path, task: str = "",
                   paper: tuple[str, dict] | None = None) -> Path:
    """AR (%) vs number of proposals per image (log x), one line per IoU type (``curves``:
    {prefix: (ks (K,), AR (K,) in [0, 1])}); ``paper`` = (prefix, {k: AR %}) the published
    FastSAM points (Figure 5 style). Saved with the Agg backend; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for prefix, (ks, ar) in curves.items():
        ax.semilogx(ks, 100 * np.asarray(ar), marker="o", ms=3, label=f"ours ({prefix})")
    if paper is not None:
        prefix, points = paper
        ax.scatter(list(points), list(points.values()), marker="*", s=90, color="k",
                   label=f"FastSAM paper ({prefix})", zorder=3)
    ax.set(xlabel="proposals per image", ylabel="AR@k (%), IoU .50:.95", ylim=(0, 100),
           title=f"{task} AR vs #proposals")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
