"""Edge non-maximum suppression of the structured-edges toolbox (Dollar & Zitnick).

The pipeline HED/RCF/SAM-style evaluations run before the benchmark::

    E = convTri(E, 1); [Ox, Oy] = gradient2(convTri(E, 4));
    [Oxx, ~] = gradient2(Ox); [Oxy, Oyy] = gradient2(Oy);
    O = mod(atan(Oyy .* sign(-Oxy) ./ (Oxx + 1e-5)), pi);
    E = edgesNmsMex(E, O, 1, 5, 1.01);

All functions are vectorised numpy (float64) and pure.
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv_tri", "gradient2", "edge_orientation", "edge_nms", "nms_edges"]


def conv_tri(img: np.ndarray, r: float) -> np.ndarray:
    """Triangle-filter smoothing, toolbox ``convTri(I, r)`` with symmetric padding.

    img: (H, W) float. r <= 1 may be fractional (the [1 p 1]/(2+p) kernel); r > 1 is rounded
    down to an integer radius. Returns float64 (H, W).
    """
    img = np.asarray(img, dtype=np.float64)
    if r <= 0:
        return img.copy()
    if r <= 1:
        p = 12.0 / r / (r + 2) - 2
        kernel, rad = np.array([1.0, p, 1.0]) / (2 + p), 1
    else:
        rad = int(r)
        kernel = np.concatenate([np.arange(1, rad + 2), np.arange(rad, 0, -1)]) / (rad + 1) ** 2
    pad = np.pad(img, rad, mode="symmetric")
    h, w = img.shape
    rows = sum(k * pad[i : i + h, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


def gradient2(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numerical gradients, toolbox ``gradient2`` (= MATLAB ``gradient``): returns (Gx, Gy).

    Central differences inside, one-sided at the borders; each (H, W) float64.
    """
    gy, gx = np.gradient(np.asarray(img, dtype=np.float64))
    return gx, gy


def edge_orientation(edges: np.ndarray, r: int = 4) -> np.ndarray:
    """Edge normal orientation in [0, pi) from second derivatives of ``convTri(E, r)``.

    edges: (H, W) float (already ``convTri(E, 1)`` smoothed in the usual pipeline).
    Returns (H, W) float64, the toolbox's ``O = mod(atan(Oyy*sign(-Oxy)/(Oxx+1e-5)), pi)``.
    """
    ox, oy = gradient2(conv_tri(edges, r))
    oxx, _ = gradient2(ox)
    oxy, oyy = gradient2(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (H, W) ``img`` at float columns x / rows y, clamped as in edgesNmsMex ``interp``."""
    h, w = img.shape
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.intp), y.astype(np.intp)
    dx, dy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - dx) * (1 - dy)
        + img[y0, x0 + 1] * dx * (1 - dy)
        + img[y0 + 1, x0] * (1 - dx) * dy
        + img[y0 + 1, x0 + 1] * dx * dy
    )


def edge_nms(edges: np.ndarray, ori: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01):
    """Suppress non-maxima across the edge, toolbox ``edgesNmsMex(E, O, r, s, m)``.

    edges, ori: (H, W). A pixel is zeroed when ``m * E`` is below E bilinearly sampled at
    distance d = -r..r (d != 0) along ``(cos O, sin O)``; then a border band of width
    ``s`` is faded linearly to 0. Returns float64 (H, W).
    """
    edges = np.asarray(edges, dtype=np.float64)
    h, w = edges.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cos_o, sin_o = np.cos(ori), np.sin(ori)
    keep = np.ones((h, w), dtype=bool)
    for d in range(-r, r + 1):
        if d:
            keep &= ~(edges * m < _bilinear(edges, xx + d * cos_o, yy + d * sin_o))
    out = np.where(keep, edges, 0.0)
    s = min(s, w // 2, h // 2)
    if s > 0:
        fade_c, fade_r = np.ones(w), np.ones(h)
        ramp = np.arange(s) / s
        fade_c[:s], fade_c[w - s :] = ramp, ramp[::-1]
        fade_r[:s], fade_r[h - s :] = ramp, ramp[::-1]
        out *= fade_r[:, None] * fade_c[None, :]
    return out


def nms_edges(edges: np.ndarray) -> np.ndarray:
    """The full HED/structured-edges post-processing: smooth, orient, NMS (r=1, s=5, m=1.01).

    edges: (H, W) soft edge map in [0, 1]. Returns the thinned soft map, float64 (H, W).
    """
    smooth = conv_tri(edges, 1)
    return edge_nms(smooth, edge_orientation(smooth, 4), r=1, s=5, m=1.01)
