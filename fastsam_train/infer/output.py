"""What a prediction leaves behind: COCO RLE masks, a JSON document and a PNG overlay (drawn by
``fastsam_train.plots.mask_overlay``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    return atomic_write_image(path, rgb[..., ::-1], fsync=False)
