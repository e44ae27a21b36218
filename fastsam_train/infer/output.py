"""What a prediction leaves behind: COCO RLE masks, a JSON document and a PNG overlay."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from fastsam_train.data.render import palette
from fastsam_train.io import atomic_write_image, atomic_write_json
from fastsam_train.masks import encode_masks, rle_areas

if TYPE_CHECKING:
    from fastsam_train.infer.postprocess import Segmentation


def segmentation_rles(seg: Segmentation) -> list[dict]:
    """The RLEs of ``seg`` (encoded from its dense masks if it has no RLEs yet)."""
    return seg.rles if seg.rles is not None else encode_masks(seg.masks)


def to_json(seg: Segmentation, image: str = "", tags: list[str] | None = None) -> dict:
    """A JSON-ready dict: image name and size, the ``mask_protocol`` that made the masks (when
    known), and per mask its COCO RLE ``segmentation``, ``bbox`` (COCO xywh, original pixels),
    ``score``, ``area`` (pixels) and, if ``tags`` are given, ``prompt`` (what selected it)."""
    rles = segmentation_rles(seg)
    if seg.areas is not None:
        areas = seg.areas.tolist()
    else:
        areas = [int(a) for a in rle_areas(rles)]
    annotations = []
    for rle, box, score, area in zip(rles, seg.boxes.tolist(), seg.scores.tolist(), areas,
                                     strict=True):
        x1, y1, x2, y2 = box
        annotations.append({"segmentation": rle, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score, "area": int(area)})
    for annotation, tag in zip(annotations, tags or [], strict=tags is not None):
        annotation["prompt"] = tag
    doc = {"image": image, "height": seg.image_hw[0], "width": seg.image_hw[1]}
    if "mask_protocol" in seg.extra:
        doc["mask_protocol"] = seg.extra["mask_protocol"]
    return {**doc, "annotations": annotations}


def save_json(seg: Segmentation, path: str | Path, image: str = "",
              tags: list[str] | None = None) -> Path:
    return atomic_write_json(path, to_json(seg, image, tags), fsync=False)


def overlay(image: np.ndarray, masks: torch.Tensor, points: np.ndarray | None = None,
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


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    return atomic_write_image(path, rgb[..., ::-1], fsync=False)
