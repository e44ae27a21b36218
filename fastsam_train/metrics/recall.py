"""Class-agnostic average recall of proposals (boxes or masks), computed by pycocotools.

One function for every caller: validation during training (held-out SA-1B shards) and the
COCO / LVIS proposal evaluation, which only adapt their annotations into the COCO dict this
takes. All ground truth is one category (``useCats=0``), crowd regions are handled as COCOeval
does (a proposal matched to a crowd region is neither a hit nor a miss), and AR@k is the mean
over IoU 0.50:0.95 of recall with the k best-scored proposals per image.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

AREA_NAMES = ("all", "small", "medium", "large")


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def average_recall(gt: dict, proposals: list[dict], iou_type: str = "segm",
                   max_dets: Sequence[int] = (10, 100, 1000)) -> dict[str, float]:
    """AR of class-agnostic proposals against COCO-format ground truth.

    gt: a COCO dataset dict (``images``, ``annotations``, ``categories``); categories are ignored.
    proposals: COCO results (``image_id``, ``score``, and ``bbox`` xywh or ``segmentation`` RLE).
    Returns ``{"ar_10": ..., "ar_100": ..., "ar_1000": ..., "ar_s_1000": ..., "ar_m_1000": ...,
    "ar_l_1000": ...}`` (the size rows at the largest k). Images without proposals count as
    misses; an image id absent from ``gt`` raises ValueError.
    """
    recall = recall_table(gt, proposals, iou_type, max_dets)  # (T, A, K)
    top = max(max_dets)
    out = {f"ar_{k}": _mean_valid(recall[:, 0, i]) for i, k in enumerate(max_dets)}
    for a, name in enumerate(AREA_NAMES[1:], start=1):
        out[f"ar_{name[0]}_{top}"] = _mean_valid(recall[:, a, len(max_dets) - 1])
    return out


def recall_table(gt: dict, proposals: list[dict], iou_type: str,
                 max_dets: Sequence[int]) -> np.ndarray:
    """Recall array (10 IoU thresholds, 4 area ranges, len(max_dets)); -1 where no GT."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    gt_ids = {img["id"] for img in gt["images"]}
    unknown = {p["image_id"] for p in proposals} - gt_ids
    if unknown:
        raise ValueError(f"{len(unknown)} proposal image ids are not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    coco_gt = _coco_from_dict(gt)
    if not proposals:
        return np.zeros((10, 4, len(max_dets)))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(p, category_id=_any_category(gt)) for p in proposals])
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
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
             counts: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
             ) -> tuple[np.ndarray, np.ndarray]:
    """AR as a function of the number of proposals per image: ``(counts, ar)``."""
    recall = recall_table(gt, proposals, iou_type, counts)
    return np.asarray(sorted(counts)), np.array([_mean_valid(recall[:, 0, i])
                                                 for i in range(len(counts))])
