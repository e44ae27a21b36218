"""Edge maps from instance masks: the zero-shot edge protocol of SAM (Kirillov et al. 2023,
Sec. 7.1 and App. D.2), which FastSAM follows for its Table 2.

For every mask: Sobel gradient magnitude of its unthresholded probability map, set to zero
except on the mask's outer boundary; pixel-wise maximum over masks; linear normalisation to
[0, 1]; then the structured-edges NMS (``nms.nms_edges``: edgesNmsMex r=1, s=5, m=1.01 with
the toolbox orientation). The Sobel filter and morphology are OpenCV's.

"Outer boundary" is taken as the one-pixel band on each side of the mask's external contour
(holes filled): ``dilate(F) & ~erode(F)`` with a 3x3 cross, F the hole-filled mask. Holes
(a donut's inner rim) therefore give no edge: the same rim is the outer boundary of the
mask inside it, when the model found one.
"""

from __future__ import annotations

import cv2
import numpy as np

from .nms import nms_edges

__all__ = ["outer_boundary", "mask_edge_map", "normalize", "edges_from_masks"]

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
PAD = 2  # pixels around a mask's box: Sobel (3x3) plus the boundary band


def outer_boundary(mask: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels within one step of ``mask``'s external contour (holes filled)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(m)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    inner = cv2.erode(filled, _CROSS, borderType=cv2.BORDER_REPLICATE)
    outer = cv2.dilate(filled, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (outer > 0) & (inner == 0)


def _box(mask: np.ndarray, h: int, w: int) -> tuple[slice, slice] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return (slice(max(rows[0] - PAD, 0), min(rows[-1] + PAD + 1, h)),
            slice(max(cols[0] - PAD, 0), min(cols[-1] + PAD + 1, w)))


def mask_edge_map(probs, masks) -> np.ndarray:
    """Max over masks of the Sobel magnitude of each probability map on its outer boundary.

    probs: float (n, H, W) in [0, 1] (numpy or torch; 0 outside each mask's box is fine);
    masks: bool (n, H, W), the thresholded masks that define the boundaries. Each mask is
    processed inside its box plus ``PAD`` pixels, so the cost follows the mask sizes.
    Returns float64 (H, W), unnormalised (a 0-to-1 step gives 4 with OpenCV's 3x3 Sobel).
    """
    probs = probs.detach().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    masks = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
    if probs.shape != masks.shape or probs.ndim != 3:
        raise ValueError(f"probs {probs.shape} and masks {masks.shape} must both be (n, H, W)")
    h, w = masks.shape[1:]
    out = np.zeros((h, w), np.float32)
    for prob, mask in zip(probs, masks, strict=True):
        box = _box(mask, h, w)
        if box is None:
            continue
        p = np.ascontiguousarray(prob[box], dtype=np.float32)
        grad = cv2.magnitude(cv2.Sobel(p, cv2.CV_32F, 1, 0, borderType=cv2.BORDER_REPLICATE),
                             cv2.Sobel(p, cv2.CV_32F, 0, 1, borderType=cv2.BORDER_REPLICATE))
        band = outer_boundary(mask[box])
        np.maximum(out[box], np.where(band, grad, 0), out=out[box])
    return out.astype(np.float64)


def normalize(edges: np.ndarray) -> np.ndarray:
    """Linear map of ``edges`` onto [0, 1] (min -> 0, max -> 1); a flat map becomes 0."""
    lo, hi = float(edges.min()), float(edges.max())
    if hi <= lo:
        return np.zeros_like(edges, dtype=np.float64)
    return (edges - lo) / (hi - lo)


def edges_from_masks(probs, masks, nms: bool = True) -> np.ndarray:
    """The whole protocol: ``mask_edge_map`` -> ``normalize`` -> (optional) edge NMS.
    Returns float64 (H, W) in [0, 1], ready for the benchmark (or ``to_png``)."""
    edges = normalize(mask_edge_map(probs, masks))
    return np.clip(nms_edges(edges), 0, 1) if nms else edges
