"""Class-agnostic average recall of proposals (boxes or masks), computed by COCOeval.

One function for every caller: validation during training (held-out SA-1B shards) and the
COCO / LVIS proposal evaluation, which only adapt their annotations into the COCO dict this
takes. All ground truth is one category (``useCats=0``), crowd regions are handled as COCOeval
does (a proposal matched to a crowd region is neither a hit nor a miss), and AR@k is the mean
over IoU 0.50:0.95 of recall with the k best-scored proposals per image.

Engines: ``pycocotools`` (the reference) and ``faster`` (faster-coco-eval's C++ COCOeval, the
default), whose recall arrays are identical (tests compare them on real COCO and LVIS
annotations). Proposals that carry ``area`` and ``bbox`` skip the per-RLE recomputation that
``loadRes`` would do; the values must be what pycocotools computes (mask area / toBbox).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import faster_coco_eval
import numpy as np
import pycocotools.coco
import pycocotools.cocoeval
from pycocotools import mask as mask_utils

AREA_NAMES = ("all", "small", "medium", "large")


ENGINES = {
    "pycocotools": (pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval),
    "faster": (faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster),
}


def _coco_from_dict(dataset: dict, engine: str):
    coco = ENGINES[engine][0]()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results(gt, proposals: list[dict], iou_type: str, engine: str):
    """The results object ``loadRes`` would build, reusing given ``area``/``bbox``."""
    category = _any_category(gt.dataset)
    anns = []
    for i, p in enumerate(proposals, start=1):
        ann = {**p, "id": i, "iscrowd": 0, "category_id": category}
        if iou_type == "segm":
            if "area" not in ann:
                ann["area"] = float(mask_utils.area(ann["segmentation"]))
            if "bbox" not in ann:
                ann["bbox"] = mask_utils.toBbox(ann["segmentation"]).tolist()
        else:
            x, y, w, h = ann["bbox"]
            ann["area"] = w * h
            if "segmentation" not in ann:  # as loadRes: the box as a polygon
                ann["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
        anns.append(ann)
    return _coco_from_dict({"images": gt.dataset["images"], "annotations": anns,
                            "categories": gt.dataset.get("categories", [])}, engine)


def average_recall(gt: dict, proposals: list[dict], iou_type: str = "segm",
                   max_dets: Sequence[int] = (10, 100, 1000),
                   engine: str = "faster") -> dict[str, float]:
    """AR of class-agnostic proposals against COCO-format ground truth.

    gt: a COCO dataset dict (``images``, ``annotations``, ``categories``); categories are ignored.
    proposals: COCO results (``image_id``, ``score``, and ``bbox`` xywh or ``segmentation`` RLE).
    Returns ``{"ar_10": ..., "ar_100": ..., "ar_1000": ..., "ar_s_1000": ..., "ar_m_1000": ...,
    "ar_l_1000": ...}`` (the size rows at the largest k). Images without proposals count as
    misses; an image id absent from ``gt`` raises ValueError.
    """
    recall = recall_table(gt, proposals, iou_type, max_dets, engine)  # (T, A, K)
    top = max(max_dets)
    out = {f"ar_{k}": _mean_valid(recall[:, 0, i]) for i, k in enumerate(max_dets)}
    for a, name in enumerate(AREA_NAMES[1:], start=1):
        out[f"ar_{name[0]}_{top}"] = _mean_valid(recall[:, a, len(max_dets) - 1])
    return out


def recall_table(gt: dict, proposals: list[dict], iou_type: str,
                 max_dets: Sequence[int], engine: str = "faster") -> np.ndarray:
    """Recall array (10 IoU thresholds, 4 area ranges, len(max_dets)); -1 where no GT."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    gt_ids = {img["id"] for img in gt["images"]}
    unknown = {p["image_id"] for p in proposals} - gt_ids
    if unknown:
        raise ValueError(f"{len(unknown)} proposal image ids are not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    coco_gt = _coco_from_dict(gt, engine)
    if not proposals:
        return np.zeros((10, 4, len(max_dets)))
    coco_dt = _results(coco_gt, proposals, iou_type, engine)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = ENGINES[engine][1](coco_gt, coco_dt, iou_type)
        evaluator.params.useCats = 0
        evaluator.params.maxDets = sorted(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["recall"][:, 0, :, :]


def _any_category(gt: dict) -> int:
    return gt["categories"][0]["id"] if gt.get("categories") else 1


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def ar_curve(gt: dict, proposals: list[dict], iou_type: str = "segm",
             counts: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
             engine: str = "faster") -> tuple[np.ndarray, np.ndarray]:
    """AR as a function of the number of proposals per image: ``(counts, ar)``."""
    recall = recall_table(gt, proposals, iou_type, counts, engine)
    return np.asarray(sorted(counts)), np.array([_mean_valid(recall[:, 0, i])
                                                 for i in range(len(counts))])
