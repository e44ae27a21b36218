"""Prompt selection over everything-mode masks: small pure functions, tensors in, tensors out.

Masks are bool (n, H, W) in original image pixels; points (p, 2) are integer x, y pixels;
boxes (b, 4) are xyxy pixels. Checking user input (``check_*``) is kept apart from selection.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


class PromptError(ValueError):
    """A prompt that cannot apply to the image (outside it, malformed, empty)."""


# --- checks -------------------------------------------------------------------------------------
def check_points(points: torch.Tensor, labels: torch.Tensor, hw: tuple[int, int]) -> None:
    """Raise ``PromptError`` unless points (p, 2) are finite, lie in the image, and labels (p,)
    are 0/1."""
    h, w = hw
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise PromptError(f"points must be a non-empty list of x,y pairs, got shape "
                          f"{tuple(points.shape)}")
    _check_finite(points, "point")
    if labels.shape != (len(points),):
        raise PromptError(f"{len(points)} points but {labels.numel()} labels")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise PromptError(f"labels must be 1 (foreground) or 0 (background), got "
                          f"{labels.tolist()}")
    for x, y in points.tolist():
        if not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"point ({x:g}, {y:g}) is outside the {w}x{h} image "
                              f"(x in [0, {w}), y in [0, {h}))")


def check_boxes(boxes: torch.Tensor, hw: tuple[int, int]) -> None:
    """Raise ``PromptError`` unless boxes (b, 4) are xyxy with x1 < x2, y1 < y2, overlapping the
    image."""
    h, w = hw
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise PromptError(f"boxes must be a non-empty list of x1,y1,x2,y2, got shape "
                          f"{tuple(boxes.shape)}")
    _check_finite(boxes, "box")
    for x1, y1, x2, y2 in boxes.tolist():
        if x2 <= x1 or y2 <= y1:
            raise PromptError(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) needs x1 < x2 and y1 < y2")
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            raise PromptError(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is outside the {w}x{h} image")


def _check_finite(values: torch.Tensor, what: str) -> None:
    # every comparison with NaN is False, so without this a NaN prompt passes every range check
    bad = ~torch.isfinite(values.double()).all(1)
    if bool(bad.any()):
        row = ", ".join(f"{v:g}" for v in values[bad][0].tolist())
        raise PromptError(f"{what} ({row}) has a coordinate that is not a finite number")


def check_texts(texts: list[str]) -> None:
    """Raise ``PromptError`` on an empty list or an empty / blank text."""
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise PromptError(f"text prompts must be non-empty strings, got {texts!r}")


# --- masks --------------------------------------------------------------------------------------
def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """bool (n, H, W) -> long (n,) pixel counts."""
    return torch.count_nonzero(masks.flatten(1), dim=1)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool (n, H, W) -> float (n, 4) tight xyxy boxes (x2, y2 exclusive); zeros for empty."""
    boxes = torch.zeros((len(masks), 4))
    if len(masks) == 0:
        return boxes
    rows, cols = masks.any(2), masks.any(1)  # (n, H), (n, W)
    h, w = masks.shape[1:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    boxes[:, 0] = torch.where(cols, ar_w, w).amin(1)
    boxes[:, 1] = torch.where(rows, ar_h, h).amin(1)
    boxes[:, 2] = torch.where(cols, ar_w + 1, 0).amax(1)
    boxes[:, 3] = torch.where(rows, ar_h + 1, 0).amax(1)
    return boxes * masks.flatten(1).any(1, keepdim=True)


def point_hits(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """bool (n, H, W), long (p, 2) x, y -> bool (n, p): mask k covers point i."""
    return masks[:, points[:, 1], points[:, 0]]


# --- points -------------------------------------------------------------------------------------
def select_points_any(hits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ultralytics' rule: keep masks covering a foreground point and no background point (all
    masks free of background points if every label is 0). hits (n, p), labels (p,) -> (n,) bool."""
    fg, bg = labels == 1, labels == 0
    keep = hits[:, fg].any(1) if fg.any() else torch.ones(len(hits), dtype=torch.bool)
    return keep & ~hits[:, bg].any(1)


def merge_points_official(masks: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                          areas: torch.Tensor | None = None) -> torch.Tensor:
    """The official FastSAM rule: sweep the masks from largest to smallest; a mask covering a
    foreground point is added to the result, one covering a background point is removed from it
    (later, smaller masks win). bool (n, H, W), (p, 2), (p,) [, areas (n,)] -> bool (H, W)."""
    out = torch.zeros(masks.shape[1:], dtype=torch.bool)
    if len(masks) == 0:
        return out
    hits = point_hits(masks, points)  # (n, p)
    # Within one mask the points act in order and each overwrites the mask's pixels, so only the
    # last covered point counts: one image operation per mask instead of one per (mask, point).
    order = torch.arange(1, len(points) + 1)
    last = (hits * order).argmax(1)
    areas = mask_areas(masks) if areas is None else areas
    for k in torch.argsort(areas, descending=True, stable=True).tolist():
        if hits[k].any():
            out = out | masks[k] if labels[last[k]] == 1 else out & ~masks[k]
    return out


def morphological_cleanup(mask: torch.Tensor, close: int = 3, open_: int = 8) -> torch.Tensor:
    """Close (fill gaps up to ``close`` px) then open (drop specks under ``open_`` px), square
    kernels, as the paper's point-prompt post-processing. bool (H, W) -> bool (H, W)."""
    m = mask.cpu().numpy().astype(np.uint8)
    if close > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8))
    if open_ > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((open_, open_), np.uint8))
    return torch.from_numpy(m.astype(bool)).to(mask.device)


# --- boxes --------------------------------------------------------------------------------------
def box_mask_iou(masks: torch.Tensor, boxes: torch.Tensor,
                 areas: torch.Tensor | None = None) -> torch.Tensor:
    """IoU of each mask with each filled box: bool (n, H, W), (b, 4) xyxy [, areas (n,)] ->
    (b, n). Box edges are rounded to whole pixels and clipped to the image."""
    h, w = masks.shape[1:]
    area = (mask_areas(masks) if areas is None else areas).float()
    # clipped before rounding: a huge coordinate would overflow the integer conversion
    limit = torch.tensor([w, h, w, h], dtype=boxes.dtype)
    edges = torch.minimum(boxes.clamp(min=0), limit).round().long()
    out = torch.zeros((len(boxes), len(masks)))
    for i, (x1, y1, x2, y2) in enumerate(edges.tolist()):
        x1, x2, y1, y2 = max(x1, 0), min(x2, w), max(y1, 0), min(y2, h)
        inside = torch.count_nonzero(masks[:, y1:y2, x1:x2], dim=(1, 2)).float()
        box_area = max(x2 - x1, 0) * max(y2 - y1, 0)
        out[i] = inside / (box_area + area - inside).clamp(min=1)
    return out


def select_boxes(masks: torch.Tensor, boxes: torch.Tensor,
                 areas: torch.Tensor | None = None) -> torch.Tensor:
    """Per box the mask with the highest IoU to the filled box: (n, H, W), (b, 4) -> long (b,)."""
    return box_mask_iou(masks, boxes, areas).argmax(1)


# --- text ---------------------------------------------------------------------------------------
def text_scores(image_features: torch.Tensor, text_features: torch.Tensor,
                mode: str = "softmax") -> torch.Tensor:
    """Similarity of each text to each masked crop: (n, d), (t, d) -> (t, n).

    ``cosine``: cosine similarity. ``softmax``: the official FastSAM score, a softmax over the
    masks of 100 x cosine (it picks the same best mask, but reads as a probability)."""
    if mode not in ("softmax", "cosine"):
        raise ValueError(f"mode must be 'softmax' or 'cosine', got {mode!r}")
    img = torch.nn.functional.normalize(image_features.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_features.float(), dim=-1)
    cos = txt @ img.T
    return (100.0 * cos).softmax(dim=1) if mode == "softmax" else cos


def square_boxes(boxes: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """(n, 4) xyxy -> (n, 4) squares with the same centres, side = longest side x (1 + margin), so
    a crop keeps the whole object and its aspect when resized to CLIP's square input."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True).clamp(min=1) * (1 + margin) / 2
    return torch.cat([centre - half, centre + half], 1)
