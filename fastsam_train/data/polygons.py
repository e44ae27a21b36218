"""COCO RLE masks -> YOLO-seg polygons, and back.

ultralytics' segment format stores one polygon per instance (``cls x1 y1 x2 y2 ...``, coordinates
normalised to [0, 1]) and rasterises it with ``cv2.fillPoly``. SA-1B masks are arbitrary binary
masks, so two cases need a decision:

* **Holes** are kept. Each hole ring is joined to the outer ring by a zero-width "keyhole" bridge
  (out along the shortest segment, around the hole, back along the same segment). ``cv2.fillPoly``
  then leaves the hole empty, so the training target keeps it as background.
* **Multi-part masks** (``multipart="merge"``, default) are joined the same way, part to part
  along the shortest segment, which is what ultralytics' own COCO converter does for COCO's
  multi-polygon objects; the bridges rasterise to one-pixel lines. ``multipart="largest"`` keeps
  only the largest part instead. Parts smaller than ``min_part_area`` output pixels are dropped.

All coordinates here are in output pixels (x right, y down) unless a name says ``_norm``.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from fastsam_train.masks import decode_rle_crop

MULTIPART_MODES = ("merge", "largest")


@lru_cache(maxsize=64)
def _global_taps(src_total: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Area-resampling taps of a whole image axis: ``(first (J,), weight (J, K))``.

    Output pixel J covers source ``[J / scale, (J + 1) / scale)``, exactly as
    ``cv2.resize(..., INTER_AREA)`` of the full image does; tap k is source pixel first[J] + k
    with weight = overlap * scale. Cached: every mask of an image shares its axes.
    """
    inv = 1.0 / scale
    out_total = int(np.ceil(src_total * scale)) + 1
    lo = np.arange(out_total) * inv
    first = np.floor(lo).astype(np.int64)
    src = first[:, None] + np.arange(int(np.ceil(inv)) + 1)[None, :]
    overlap = np.minimum(src + 1, lo[:, None] + inv) - np.maximum(src, lo[:, None])
    weight = np.where(src < src_total, np.clip(overlap, 0, None) * scale, 0.0)
    return first, weight.astype(np.float32)


def area_taps(src_start: int, src_len: int, scale: float,
              src_total: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Taps for the crop ``[src_start, src_start + src_len)`` of an axis of ``src_total`` pixels.

    Returns ``(out_start, idx, w)``: idx/w (out_len, K) index the crop and weight it; taps
    outside the crop get weight 0 (the mask is empty there).
    """
    first, weight = _global_taps(src_total, scale)
    out_start = int(np.floor(src_start * scale))
    out_end = max(out_start + 1, int(np.ceil((src_start + src_len) * scale)))
    idx = first[out_start:out_end, None] - src_start + np.arange(weight.shape[1])[None, :]
    inside = (idx >= 0) & (idx < src_len)
    return out_start, np.where(inside, idx, 0), np.where(inside, weight[out_start:out_end], 0)


def _resample_axis0(arr: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(n, m) -> (len(idx), m): each output row is the w-weighted sum of rows idx."""
    return np.einsum("jk,jkc->jc", w, arr[idx].astype(np.float32))


def mask_crop_at_scale(
    rle: dict, scale_xy: tuple[float, float]
) -> tuple[np.ndarray, int, int] | None:
    """Decode ``rle`` inside its box and area-resample it onto the output pixel grid.

    Returns ``(crop, ox, oy)``: uint8 {0, 1} (h', w') whose pixel (0, 0) is output pixel
    (ox, oy). Equal to thresholding (>= 0.5) the full mask resized with INTER_AREA, but costs
    work proportional to the box. ``None`` if the mask is empty.
    """
    decoded = decode_rle_crop(rle)
    if decoded is None:
        return None
    crop, x0, y0 = decoded
    if scale_xy == (1.0, 1.0):
        return np.ascontiguousarray(crop), x0, y0
    src_h, src_w = rle["size"]
    bh, bw = crop.shape
    ox, ix, wx = area_taps(x0, bw, scale_xy[0], src_w)
    oy, iy, wy = area_taps(y0, bh, scale_xy[1], src_h)
    cols = _resample_axis0(crop.T, ix, wx)  # crop.T is the contiguous (w, h) storage
    both = _resample_axis0(np.ascontiguousarray(cols.T), iy, wy)  # (h', w')
    # 0.5 - 1e-6: cv2's uint8 INTER_AREA rounds 127.5 up, the reference keeps >= 128
    return (both >= 0.5 - 1e-6).astype(np.uint8), ox, oy


def mask_rings(mask: np.ndarray, min_part_area: float, epsilon: float) -> list[list[np.ndarray]]:
    """Trace a binary mask (H, W) into parts: ``[[outer (N, 2), hole (M, 2), ...], ...]``.

    Coordinates are pixel centres in ``mask``'s frame, float32. Parts whose outer area is below
    ``min_part_area`` pixels are dropped; rings are simplified with Douglas-Peucker ``epsilon``.
    """
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    parts: list[list[np.ndarray]] = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:  # a hole; collected with its parent below
            continue
        if _pixel_area(contour) < min_part_area:
            continue
        rings = [contour]
        child = hierarchy[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                rings.append(contours[child])
            child = hierarchy[child][0]
        parts.append([_simplify(r, epsilon) - 1.0 for r in rings])
    return parts


def _pixel_area(contour: np.ndarray) -> float:
    # contourArea runs through pixel centres; half the perimeter plus one restores the pixel count
    return cv2.contourArea(contour) + cv2.arcLength(contour, True) / 2 + 1


def _simplify(contour: np.ndarray, epsilon: float) -> np.ndarray:
    if epsilon > 0 and len(contour) > 4:
        contour = cv2.approxPolyDP(contour, epsilon, True)
    ring = contour.reshape(-1, 2).astype(np.float32)
    if len(ring) < 3:  # one- or two-pixel ring: the square around its pixels
        (x0, y0), (x1, y1) = ring.min(0) - 0.5, ring.max(0) + 0.5
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)
    return ring


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Join rings into one polygon (K, 2) with zero-width bridges along shortest segments.

    Ring 0 is the start; every further ring is attached where it comes closest to the path
    built so far: path[..i], ring[j..], ring[..j], ring[j], path[i..].
    """
    path = rings[0]
    for ring in rings[1:]:
        d = ((path[:, None, :] - ring[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        loop = np.concatenate([ring[j:], ring[: j + 1]])
        path = np.concatenate([path[: i + 1], loop, path[i:]])
    return path


def mask_to_polygon(
    mask: np.ndarray, multipart: str = "merge", min_part_area: float = 4.0, epsilon: float = 0.5
) -> np.ndarray | None:
    """One polygon (K, 2), pixel coordinates of ``mask`` (H, W), or None if nothing survives."""
    if multipart not in MULTIPART_MODES:
        raise ValueError(f"multipart must be one of {MULTIPART_MODES}, got {multipart!r}")
    parts = mask_rings(mask, min_part_area=min_part_area, epsilon=epsilon)
    if not parts:
        return None
    parts.sort(key=lambda rings: -abs(cv2.contourArea(rings[0])))
    if multipart == "largest":
        parts = parts[:1]
    rings = [ring for part in parts for ring in part]
    polygon = join_rings(rings)
    return polygon if len(polygon) >= 3 else None


def rle_to_polygon(
    rle: dict,
    out_size: tuple[int, int],
    multipart: str = "merge",
    min_part_area: float = 4.0,
    epsilon: float = 0.5,
) -> np.ndarray | None:
    """COCO RLE (source resolution) -> one polygon (K, 2) in output pixels, ``out_size=(h, w)``.

    Only the mask's box is decoded and resampled (exactly as a full-image INTER_AREA resize
    would), then traced, so the cost is proportional to the box, not the image.
    """
    src_h, src_w = rle["size"]
    cropped = mask_crop_at_scale(rle, (out_size[1] / src_w, out_size[0] / src_h))
    if cropped is None:
        return None
    crop, ox, oy = cropped
    poly = mask_to_polygon(crop, multipart, min_part_area, epsilon)
    if poly is None:
        return None
    poly += np.array([ox, oy], dtype=np.float32)
    poly[:, 0] = poly[:, 0].clip(0, out_size[1] - 1)
    poly[:, 1] = poly[:, 1].clip(0, out_size[0] - 1)
    return poly


def polygon_to_mask(polygon: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon (K, 2) in pixels into a uint8 {0, 1} mask of ``size=(h, w)``.

    Same call as ultralytics' ``polygon2mask`` (``cv2.fillPoly``), i.e. what training sees.
    """
    mask = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], color=1)
    return mask


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reference resampling of a full mask (H, W) to ``size=(h, w)``: area average >= 0.5."""
    if mask.shape == tuple(size):
        return mask
    out = cv2.resize(mask * np.uint8(255), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return (out >= 128).astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks of equal shape (1.0 if both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
