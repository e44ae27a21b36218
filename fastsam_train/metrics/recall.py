"""Class-agnostic average recall of proposals (boxes or masks): COCOeval's numbers, streamed.

The one recall module of the project: validation during training, the COCO / LVIS proposal
tasks and any new dataset use it (a dataset only adapts its annotations to COCO fields). All
ground truth is one class (COCOeval ``useCats=0``), crowd regions are neither hits nor misses,
and AR@k is the mean over IoU .50:.05:.95 of recall with the k best-scored proposals per image.

Streaming (bounded memory): each image is matched as soon as its proposals exist and only its
small match result is kept::

    acc = RecallAccumulator(max_det=1000)
    for each image:                        # proposals in score order, at most max_det
        ious = pairwise_iou(proposals, gt_regions(anns, h, w, "segm"), crowd)   # (D, G)
        acc.add(image_recall(ious, gt_areas, crowd))   # ranks (10, 4, G) + counts (4,)
    table = acc.recall_table(ks)           # (10 IoU, 4 areas, len(ks)), -1 where no object
    ar = ar_metrics(table, ks)             # {"ar_10": ..., "ar_s_1000": ...}

``image_recall`` records, per IoU threshold and area range, the rank of the proposal that
recalls each object (COCOeval's greedy matching, ``fastsam_train.metrics.matching``); the
accumulator keeps a histogram of those ranks (10 x 4 x max_det counts), so recall at any k <=
max_det, the AR-vs-k curve and the size rows come out at the end and memory does not grow with
the number of images. Accumulators of several processes add up (``merge``).

Whole sets of COCO results (lists of dicts) go through the same code with ``average_recall``,
``recall_table`` and ``ar_curve`` (``engine="stream"``, the default). ``engine="pycocotools"`` /
``"faster"`` run COCOeval (``useCats=0``) on the whole set instead, holding every proposal in
memory: the references the streaming numbers are tested against (identical recall arrays).
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import faster_coco_eval
import numpy as np
import pycocotools.coco
import pycocotools.cocoeval

from fastsam_train.masks import rle_areas, rle_boxes
from fastsam_train.metrics.matching import (
    AREA_NAMES,
    AREA_RANGES,
    IOU_THRESHOLDS,
    GroundTruthIndex,
    greedy_match,
    gt_regions,
    in_range,
    pairwise_iou,
    score_order,
)

ENGINES = {
    "stream": None,
    "pycocotools": (pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval),
    "faster": (faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster),
}


@dataclass
class ImageRecall:
    """One image's match result. ``ranks`` (T, A, G) int32: the rank (0-based, in score order)
    of the proposal that recalls object g at IoU threshold t when area range a is evaluated, -1
    if none or if g does not count there; ``counted`` (A,) int64: the objects that count in each
    area range (not crowd, area inside the range)."""

    ranks: np.ndarray
    counted: np.ndarray


def image_recall(ious: np.ndarray, areas: np.ndarray, crowd: np.ndarray,
                 area_ranges: Sequence[Sequence[float]] = AREA_RANGES) -> ImageRecall:
    """Match one image's proposals to its objects as COCOeval (``useCats=0``) does.

    ious: (D, G) proposal x object IoU (``pairwise_iou``), proposals in score order and already
    cut to the largest k; areas: (G,) the objects' ``area`` fields; crowd: (G,) ``iscrowd``.
    """
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    crowd = np.asarray(crowd, dtype=np.bool_).reshape(-1)
    ranks = np.full((len(IOU_THRESHOLDS), len(area_ranges), len(areas)), -1, np.int32)
    counted = np.zeros(len(area_ranges), np.int64)
    for a, area_range in enumerate(area_ranges):
        ignore = crowd | ~in_range(areas, area_range)
        counted[a] = int((~ignore).sum())
        if counted[a] and len(ious):
            gt_match, _ = greedy_match(ious, ignore, crowd)
            ranks[:, a] = np.where(ignore, -1, gt_match)
    return ImageRecall(ranks, counted)


class RecallAccumulator:
    """Per-image ``ImageRecall``s folded into a histogram of recall ranks.

    max_det: the largest k; n_areas: area ranges per image result (4: all/small/medium/large).
    Memory: (10, n_areas, max_det) int64, whatever the number of images.
    """

    def __init__(self, max_det: int, n_areas: int = len(AREA_RANGES)) -> None:
        self.max_det = int(max_det)
        self.hist = np.zeros((len(IOU_THRESHOLDS), n_areas, self.max_det), np.int64)
        self.counted = np.zeros(n_areas, np.int64)

    def add(self, result: ImageRecall) -> None:
        hit = (result.ranks >= 0) & (result.ranks < self.max_det)
        t, a, _ = np.nonzero(hit)
        np.add.at(self.hist, (t, a, result.ranks[hit]), 1)
        self.counted += result.counted

    def merge(self, other: RecallAccumulator) -> None:
        """Add another accumulator's counts (e.g. another process's images)."""
        self.hist += other.hist
        self.counted += other.counted

    def recall_table(self, ks: Sequence[int]) -> np.ndarray:
        """(T, A, len(ks)) recall with the k best proposals per image, COCOeval's
        ``eval["recall"][:, 0, :, :]``: hits / counted objects, -1 where nothing counts."""
        ks = [int(k) for k in ks]
        if min(ks) < 1 or max(ks) > self.max_det:
            raise ValueError(f"k must be in 1..{self.max_det}, got {ks}")
        hits = np.cumsum(self.hist, axis=2)[:, :, np.asarray(ks) - 1]
        table = -np.ones(hits.shape)
        valid = self.counted > 0
        table[:, valid] = hits[:, valid] / self.counted[valid][None, :, None]
        return table


def mean_valid(values: np.ndarray) -> float:
    """Mean over the entries > -1 (COCOeval's summary), NaN when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def ar_metrics(table: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"ar_<k>": ...}`` (all areas) for every k and ``ar_<s|m|l>_<max k>`` from a
    (T, A, len(ks)) recall table (A = the 4 COCO area ranges, or only "all")."""
    out = {f"ar_{k}": mean_valid(table[:, 0, i]) for i, k in enumerate(ks)}
    for a in range(1, table.shape[1]):
        out[f"ar_{AREA_NAMES[a][0]}_{ks[-1]}"] = mean_valid(table[:, a, -1])
    return out


def average_recall(gt: dict, proposals: list[dict], iou_type: str = "segm",
                   max_dets: Sequence[int] = (10, 100, 1000),
                   engine: str = "stream") -> dict[str, float]:
    """AR of class-agnostic proposals against COCO-format ground truth.

    gt: a COCO dataset dict (``images``, ``annotations``, ``categories``); categories are ignored.
    proposals: COCO results (``image_id``, ``score``, and ``bbox`` xywh or ``segmentation`` RLE).
    Returns ``{"ar_10": ..., "ar_100": ..., "ar_1000": ..., "ar_s_1000": ..., "ar_m_1000": ...,
    "ar_l_1000": ...}`` (the size rows at the largest k). Images without proposals count as
    misses; an image id absent from ``gt`` raises ValueError.
    """
    ks = sorted(max_dets)
    return ar_metrics(recall_table(gt, proposals, iou_type, ks, engine), ks)


def recall_table(gt: dict, proposals: list[dict], iou_type: str,
                 max_dets: Sequence[int], engine: str = "stream") -> np.ndarray:
    """Recall array (10 IoU thresholds, 4 area ranges, len(max_dets) sorted); -1 where no GT."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    gt_ids = {img["id"] for img in gt["images"]}
    unknown = {p["image_id"] for p in proposals} - gt_ids
    if unknown:
        raise ValueError(f"{len(unknown)} proposal image ids are not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    ks = sorted(max_dets)
    if engine == "stream":
        return _stream_table(gt, proposals, iou_type, ks)
    if not proposals:
        return np.zeros((len(IOU_THRESHOLDS), len(AREA_RANGES), len(ks)))
    return _cocoeval_table(gt, proposals, iou_type, ks, engine)


def _stream_table(gt: dict, proposals: list[dict], iou_type: str, ks: list[int]) -> np.ndarray:
    index = GroundTruthIndex(gt)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for p in proposals:
        by_image[p["image_id"]].append(p)
    acc = RecallAccumulator(ks[-1])
    key = "segmentation" if iou_type == "segm" else "bbox"
    for image_id, image in index.images.items():
        props, anns = by_image.get(image_id, []), index.annotations(image_id)
        order = score_order([p["score"] for p in props])[:ks[-1]]
        regions = gt_regions(anns, image["height"], image["width"], iou_type)
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]
        ious = pairwise_iou([props[i][key] for i in order], regions, crowd)
        acc.add(image_recall(ious, [a["area"] for a in anns], crowd))
    return acc.recall_table(ks)


def ar_curve(gt: dict, proposals: list[dict], iou_type: str = "segm",
             counts: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
             engine: str = "stream") -> tuple[np.ndarray, np.ndarray]:
    """AR as a function of the number of proposals per image: ``(counts, ar)``."""
    recall = recall_table(gt, proposals, iou_type, counts, engine)
    return np.asarray(sorted(counts)), np.array([mean_valid(recall[:, 0, i])
                                                 for i in range(len(counts))])


# --- the references: COCOeval (useCats=0) on the whole set ---------------------------------

def _coco_from_dict(dataset: dict, engine: str):
    coco = ENGINES[engine][0]()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results(gt, proposals: list[dict], iou_type: str, engine: str):
    """The results object ``loadRes`` would build, reusing given ``area``/``bbox``."""
    category = gt.dataset["categories"][0]["id"] if gt.dataset.get("categories") else 1
    anns = []
    for i, p in enumerate(proposals, start=1):
        ann = {**p, "id": i, "iscrowd": 0, "category_id": category}
        if iou_type == "segm":
            if "area" not in ann:
                ann["area"] = float(rle_areas([ann["segmentation"]])[0])
            if "bbox" not in ann:
                ann["bbox"] = rle_boxes([ann["segmentation"]])[0].tolist()
        else:
            x, y, w, h = ann["bbox"]
            ann["area"] = w * h
            if "segmentation" not in ann:  # as loadRes: the box as a polygon
                ann["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
        anns.append(ann)
    return _coco_from_dict({"images": gt.dataset["images"], "annotations": anns,
                            "categories": gt.dataset.get("categories", [])}, engine)


def _cocoeval_table(gt: dict, proposals: list[dict], iou_type: str, ks: list[int],
                    engine: str) -> np.ndarray:
    coco_gt = _coco_from_dict(gt, engine)
    coco_dt = _results(coco_gt, proposals, iou_type, engine)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = ENGINES[engine][1](coco_gt, coco_dt, iou_type)
        evaluator.params.useCats = 0
        evaluator.params.maxDets = ks
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["recall"][:, 0, :, :]
