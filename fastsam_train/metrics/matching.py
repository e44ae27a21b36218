"""COCOeval's per-image matching, one image at a time (shared by proposal recall and instance AP).

pycocotools' ``COCOeval.evaluateImg`` (and lvis-api's ``LVISEval.evaluate_img``, the same loop)
matches the detections of one image (and one category, or all with ``useCats=0``) to its ground
truth greedily: detections in descending score (stable), each takes the not yet matched object
with the highest IoU >= the threshold (the last one on a tie), objects that count before ignored
ones (crowd or outside the area range), a crowd region being matchable any number of times.
This module does exactly that per image, so nothing but the small match results has to outlive
the image:

* ``GroundTruthIndex``: each image's annotations in COCOeval's order (by category id, then file
  order; annotations of unknown categories dropped, as COCOeval's ``catIds`` does).
* ``gt_regions`` / ``pairwise_iou``: the regions and IoUs COCOeval computes
  (``COCO.annToRLE``, ``pycocotools.mask.iou`` with the crowd flags), so values are identical.
* ``greedy_match``: the matching loop, compiled (numba), on all IoU thresholds at once.

Matches are kept as indices, not annotation ids, so an annotation with id 0 (which COCOeval
reads as "unmatched") is matched like any other; with ids >= 1 the results are COCOeval's.
The parameters (IoU thresholds, area ranges, recall thresholds) are read from pycocotools'
own ``Params``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numba
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import Params

from fastsam_train.masks import compress_rle, polygons_to_rle

_PARAMS = Params(iouType="segm")
IOU_THRESHOLDS: np.ndarray = np.asarray(_PARAMS.iouThrs, dtype=np.float64)  # (10,) .50:.05:.95
RECALL_THRESHOLDS: np.ndarray = np.asarray(_PARAMS.recThrs, dtype=np.float64)  # (101,)
AREA_RANGES: tuple[tuple[float, float], ...] = tuple(tuple(r) for r in _PARAMS.areaRng)
AREA_NAMES: tuple[str, ...] = tuple(_PARAMS.areaRngLbl)  # all, small, medium, large
IOU_TYPES = ("segm", "bbox")


class GroundTruthIndex:
    """Per-image access to a COCO-format dict without copying it.

    gt: ``images`` (``id``, ``height``, ``width``), ``annotations`` (``image_id``,
    ``category_id``, ``area``, ``iscrowd``, and ``segmentation`` and/or ``bbox``), ``categories``.
    ``annotations(image_id)`` gives the image's annotations in COCOeval's order: by category id,
    file order within a category, unknown categories left out.
    """

    def __init__(self, gt: dict) -> None:
        self.images = {im["id"]: im for im in gt["images"]}
        self.category_ids = np.array(sorted({c["id"] for c in gt.get("categories", [])}),
                                     dtype=np.int64)
        rank = {int(c): k for k, c in enumerate(self.category_ids)}
        self._anns = gt["annotations"]
        by_image: dict[int, list[int]] = defaultdict(list)
        for i, ann in enumerate(self._anns):
            if ann["category_id"] in rank:
                by_image[ann["image_id"]].append(i)
        self._by_image = {iid: np.array(sorted(idx, key=lambda i: rank[self._anns[i]
                                                                     ["category_id"]]), np.int64)
                          for iid, idx in by_image.items()}

    def __contains__(self, image_id) -> bool:
        return image_id in self.images

    def annotations(self, image_id: int) -> list[dict]:
        return [self._anns[i] for i in self._by_image.get(image_id, ())]


def gt_regions(anns: Sequence[dict], height: int, width: int, iou_type: str) -> list:
    """What COCOeval compares: ``bbox`` lists, or RLEs as ``COCO.annToRLE`` makes them
    (polygons merged, uncompressed RLE compressed, compressed RLE as is)."""
    if iou_type == "bbox":
        return [a["bbox"] for a in anns]
    out = []
    for ann in anns:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            out.append(polygons_to_rle(seg, height, width))
        elif isinstance(seg["counts"], list):
            out.append(compress_rle(seg, height, width))
        else:
            out.append(seg)
    return out


def pairwise_iou(dt, gt, crowd: Sequence[bool]) -> np.ndarray:
    """(D, G) float64 IoU by ``pycocotools.mask.iou`` (a crowd region: intersection over the
    detection's area). dt / gt: RLE dicts or xywh boxes ((n, 4) array or list)."""
    n_dt, n_gt = len(dt), len(gt)
    if n_dt == 0 or n_gt == 0:
        return np.zeros((n_dt, n_gt))
    ious = mask_utils.iou(dt, gt, [int(bool(c)) for c in crowd])
    return np.asarray(ious, dtype=np.float64).reshape(n_dt, n_gt)


def in_range(areas: np.ndarray, area_range: Sequence[float]) -> np.ndarray:
    """COCOeval's area test, both ends inclusive."""
    return (areas >= area_range[0]) & (areas <= area_range[1])


def score_order(scores: np.ndarray) -> np.ndarray:
    """COCOeval's detection order: descending score, stable (``mergesort`` of -score)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")


@numba.njit(cache=True, nogil=True)
def _greedy(ious, ignore, crowd, thresholds):  # pragma: no cover - compiled
    n_thr, (n_dt, n_gt) = len(thresholds), ious.shape
    gt_match = np.full((n_thr, n_gt), -1, np.int32)
    dt_match = np.full((n_thr, n_dt), -1, np.int32)
    for t in range(n_thr):
        for d in range(n_dt):
            best = min(thresholds[t], 1 - 1e-10)
            m = -1
            for g in range(n_gt):
                if gt_match[t, g] >= 0 and not crowd[g]:
                    continue
                if m > -1 and not ignore[m] and ignore[g]:
                    break
                if ious[d, g] < best:
                    continue
                best = ious[d, g]
                m = g
            if m > -1:
                dt_match[t, d] = m
                gt_match[t, m] = d
    return gt_match, dt_match


def greedy_match(ious: np.ndarray, ignore: np.ndarray, crowd: np.ndarray,
                 thresholds: np.ndarray = IOU_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching of one image (and category) at every IoU threshold.

    ious: (D, G), detections already in score order; ignore, crowd: (G,) bool.
    Returns ``gt_match`` (T, G) int32: the detection index that took each object, -1 if none
    (for a crowd region, the last one), and ``dt_match`` (T, D) int32: the object index each
    detection took, -1 if none. Objects are reordered internally (ignored ones last, stable),
    as COCOeval does; indices refer to the given order.
    """
    ignore = np.asarray(ignore, dtype=np.bool_)
    n_dt, n_gt = ious.shape
    if n_dt == 0 or n_gt == 0:
        return (np.full((len(thresholds), n_gt), -1, np.int32),
                np.full((len(thresholds), n_dt), -1, np.int32))
    order = np.argsort(ignore, kind="mergesort")
    gt_sorted, dt_sorted = _greedy(np.ascontiguousarray(ious[:, order], dtype=np.float64),
                                   ignore[order], np.asarray(crowd, dtype=np.bool_)[order],
                                   np.asarray(thresholds, dtype=np.float64))
    gt_match = np.empty_like(gt_sorted)
    gt_match[:, order] = gt_sorted
    dt_match = np.where(dt_sorted >= 0, order[np.maximum(dt_sorted, 0)], -1).astype(np.int32)
    return gt_match, dt_match
