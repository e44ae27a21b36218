"""Instance AP (masks or boxes) from per-image results: pycocotools' and lvis-api's numbers.

``rules="coco"`` is pycocotools ``COCOeval`` (per category, at most 100 detections per image
and category, crowd regions ignored): AP, AP50, AP75, APs, APm, APl (``stats[0:6]``).
``rules="lvis"`` is lvis-api ``LVISEval`` with LVIS's federated rules: the ``max_dets`` (300)
best detections of each image over all categories; a detection is evaluated only on images
where its category is verified, present (ground truth) or absent (``neg_category_ids``); an
unmatched detection of a category in the image's ``not_exhaustive_category_ids`` is ignored,
not a false positive. Reported: AP, AP50, AP75, APs/m/l and APr/c/f.

Streaming: ``image_result`` matches one image's detections to its ground truth, per category,
exactly as the references do (``fastsam_train.metrics.matching``) and keeps, per detection, the
category, the score and 2 x 40 bits (true positive / ignored at each of 10 IoU thresholds x 4
area ranges), and per category the number of objects that count in each area range. The masks
are dropped. Precision at a recall level needs every category's detections ranked by score over
the whole dataset, so these per-detection records (22 bytes each; at most 300 per image with
LVIS's rules, ~130 MB for LVIS v1 val) stay in memory until ``summary()``: that is the part of
the references that cannot be computed image by image.

    ap = InstanceAP(gt, rules="lvis")
    ap.add(image_id, ap.image_result(image, detections))   # per image, any order
    ap.summary()   # {"ap": ..., "ap50": ..., ..., "ap_f": ...}

Image results are dicts of small numpy arrays, so they can be written to disk and added back
(resuming an interrupted run).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastsam_train.masks import rle_areas
from fastsam_train.metrics.matching import (
    AREA_NAMES,
    AREA_RANGES,
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    GroundTruthIndex,
    greedy_match,
    gt_regions,
    in_range,
    pairwise_iou,
    score_order,
)

COCO_MAX_DETS = 100  # pycocotools' maxDets[-1]: per image and category
AREAS = tuple("" if a == "all" else f"_{a[0]}" for a in AREA_NAMES)  # "", "_s", "_m", "_l"
FREQUENCIES = ("r", "c", "f")  # lvis-api's order of frequency groups


class InstanceAP:
    """Streaming COCO / LVIS AP. gt: COCO-format dict (LVIS: images with ``neg_category_ids``
    and ``not_exhaustive_category_ids``, categories with ``frequency``); rules: ``coco`` or
    ``lvis``; iou_type: ``segm`` (detections carry an RLE ``segmentation``) or ``bbox``;
    max_dets: detections per image for ``lvis`` (LVIS's 300); ``coco`` keeps 100 per image and
    category, as pycocotools does."""

    def __init__(self, gt: dict, rules: str = "coco", iou_type: str = "segm",
                 max_dets: int = 300) -> None:
        if rules not in ("coco", "lvis"):
            raise ValueError(f"rules must be 'coco' or 'lvis', got {rules!r}")
        if iou_type not in ("segm", "bbox"):
            raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
        self.rules, self.iou_type, self.max_dets = rules, iou_type, int(max_dets)
        self.index = GroundTruthIndex(gt)
        self.category_ids = self.index.category_ids
        self._position = {int(c): k for k, c in enumerate(self.category_ids)}
        if rules == "lvis":
            freq = {c["id"]: c.get("frequency") for c in gt["categories"]}
            if not all(f in FREQUENCIES for f in freq.values()):
                raise ValueError("LVIS rules need every category's 'frequency' (r / c / f)")
            self.frequency_groups = [[k for k, c in enumerate(self.category_ids)
                                      if freq[int(c)] == g] for g in FREQUENCIES]
        self.reset()

    def reset(self) -> None:
        self._parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._counted = np.zeros((len(self.category_ids), len(AREA_RANGES)), np.int64)

    def image_result(self, image: dict, detections: Sequence[dict]) -> dict[str, np.ndarray]:
        """Match one image's detections (``category_id``, ``score``, ``segmentation`` RLE or
        ``bbox`` xywh, optional ``area``; any order) to its ground truth.

        Returns ``cat`` (n,) int32 category positions, ``score`` (n,) float64, ``tp`` / ``ig``
        (n, 5) uint8 (packed (T=10, A=4) flags), ``gt_cat`` (m,) int32 and ``gt_counted`` (m, 4)
        int32 (objects that count per area range, for each category with objects here).
        """
        anns = self.index.annotations(image["id"])
        keep = self._kept(image, detections, {a["category_id"] for a in anns})
        by_cat: dict[int, list[int]] = {}
        for i in keep:
            by_cat.setdefault(detections[i]["category_id"], []).append(i)
        gt_by_cat: dict[int, list[dict]] = {}
        for a in anns:
            gt_by_cat.setdefault(a["category_id"], []).append(a)
        cat, score, tp, ig, gt_cat, gt_counted = [], [], [], [], [], []
        for c in sorted(set(by_cat) | set(gt_by_cat)):
            dets = [detections[i] for i in by_cat.get(c, [])]
            if self.rules == "coco":
                dets = dets[:COCO_MAX_DETS]
            hit, ignored, counted = self._match(image, dets, gt_by_cat.get(c, []))
            cat.append(np.full(len(dets), self._position[c], np.int32))
            score.append(np.array([d["score"] for d in dets], np.float64))
            tp.append(hit)
            ig.append(ignored)
            gt_cat.append(self._position[c])
            gt_counted.append(counted)
        flags = len(IOU_THRESHOLDS) * len(AREA_RANGES)
        return {"cat": np.concatenate([np.zeros(0, np.int32), *cat]),
                "score": np.concatenate([np.zeros(0), *score]),
                "tp": np.packbits(np.concatenate([np.zeros((0, flags), bool), *tp]), axis=1),
                "ig": np.packbits(np.concatenate([np.zeros((0, flags), bool), *ig]), axis=1),
                "gt_cat": np.array(gt_cat, np.int32),
                "gt_counted": np.array(gt_counted, np.int32).reshape(-1, len(AREA_RANGES))}

    def _kept(self, image: dict, detections: Sequence[dict], gt_cats: set) -> list[int]:
        """Indices of the detections the reference evaluates, best first (stable)."""
        order = score_order([d["score"] for d in detections])
        unknown = {d["category_id"] for d in detections} - set(self._position)
        if unknown:
            raise ValueError(f"image {image['id']}: detection categories {sorted(unknown)[:5]} "
                             "are not in the ground truth")
        if self.rules == "coco":
            return order.tolist()
        if "neg_category_ids" not in image or "not_exhaustive_category_ids" not in image:
            raise ValueError(f"image {image['id']}: LVIS rules need 'neg_category_ids' and "
                             "'not_exhaustive_category_ids' in the image record")
        verified = gt_cats | set(image["neg_category_ids"])
        return [i for i in order[:self.max_dets].tolist()
                if detections[i]["category_id"] in verified]

    def _match(self, image: dict, dets: list[dict], gts: list[dict]):
        """One image and category: (tp (D, 40), ignored (D, 40), counted (4,))."""
        if self.rules == "coco":
            crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], np.bool_)
            base, lenient = crowd, False
        else:
            crowd = np.zeros(len(gts), np.bool_)
            base = np.array([bool(g.get("ignore", 0)) for g in gts], np.bool_)
            lenient = dets[0]["category_id"] in image["not_exhaustive_category_ids"] \
                if dets else False
        h, w = image["height"], image["width"]
        key = "segmentation" if self.iou_type == "segm" else "bbox"
        ious = pairwise_iou([d[key] for d in dets], gt_regions(gts, h, w, self.iou_type),
                            crowd)
        gt_area = np.array([g["area"] for g in gts], np.float64)
        dt_area = self._areas(dets)
        shape = (len(dets), len(IOU_THRESHOLDS), len(AREA_RANGES))
        tp, ig = np.zeros(shape, np.bool_), np.zeros(shape, np.bool_)
        counted = np.zeros(len(AREA_RANGES), np.int32)
        for a, area_range in enumerate(AREA_RANGES):
            ignore = base | ~in_range(gt_area, area_range)
            counted[a] = int((~ignore).sum())
            _, dt_match = greedy_match(ious, ignore, crowd)
            matched = dt_match >= 0  # (T, D)
            loose = ~in_range(dt_area, area_range) | lenient
            ignored = np.where(matched, ignore[np.maximum(dt_match, 0)] if len(gts) else False,
                               loose[None, :])
            tp[:, :, a] = (matched & ~ignored).T
            ig[:, :, a] = ignored.T
        flat = (len(dets), shape[1] * shape[2])
        return tp.reshape(flat), ig.reshape(flat), counted

    def _areas(self, dets: list[dict]) -> np.ndarray:
        if self.iou_type == "bbox":  # loadRes / LVISResults: w * h
            return np.array([d["bbox"][2] * d["bbox"][3] for d in dets], np.float64)
        if all("area" in d for d in dets):
            return np.array([d["area"] for d in dets], np.float64)
        return rle_areas([d["segmentation"] for d in dets])

    def add(self, image_id: int, result: dict[str, np.ndarray]) -> None:
        """Fold in one ``image_result`` (its arrays are kept, not copied)."""
        self._parts.append((int(image_id), result["cat"], result["score"], result["tp"],
                            result["ig"]))
        np.add.at(self._counted, result["gt_cat"], result["gt_counted"])

    def precision(self) -> np.ndarray:
        """(T, R, K, A) interpolated precision as the references' ``accumulate`` gives it
        (-1 where a category has no object that counts)."""
        parts = sorted(self._parts, key=lambda p: p[0])  # the references walk images by id
        cat, score, tp, ig = (np.concatenate([p[i] for p in parts]) if parts else None
                              for i in range(1, 5))
        n_thr, n_area = len(IOU_THRESHOLDS), len(AREA_RANGES)
        out = -np.ones((n_thr, len(RECALL_THRESHOLDS), len(self.category_ids), n_area))
        if cat is None:
            return out
        order = np.argsort(cat, kind="stable")
        bounds = np.searchsorted(cat[order], np.arange(len(self.category_ids) + 1))
        for k in np.flatnonzero(self._counted.any(axis=1)):
            sel = order[bounds[k]:bounds[k + 1]]
            rank = sel[np.argsort(-score[sel], kind="mergesort")]
            tps = np.unpackbits(tp[rank], axis=1, count=n_thr * n_area).astype(bool)
            igs = np.unpackbits(ig[rank], axis=1, count=n_thr * n_area).astype(bool)
            tps, igs = tps.reshape(-1, n_thr, n_area), igs.reshape(-1, n_thr, n_area)
            for a in np.flatnonzero(self._counted[k]):
                out[:, :, k, a] = interpolated_precision(tps[:, :, a].T, igs[:, :, a].T,
                                                         int(self._counted[k, a]))
        return out

    def summary(self) -> dict[str, float]:
        """The references' summary numbers (fractions; -1 where nothing counts, as they do)."""
        p = self.precision()
        out = {}
        for thr, name in ((None, "ap"), (0.5, "ap50"), (0.75, "ap75")):
            s = p if thr is None else p[np.where(thr == IOU_THRESHOLDS)[0]]
            out[name] = _mean(s[:, :, :, [0]])
        for a in (1, 2, 3):
            out[f"ap{AREAS[a]}"] = _mean(p[:, :, :, [a]])
        if self.rules == "lvis":
            for g, group in zip(FREQUENCIES, self.frequency_groups, strict=True):
                out[f"ap_{g}"] = _mean(p[:, :, group, [0]])
        return out


def interpolated_precision(tps: np.ndarray, ignored: np.ndarray, counted: int) -> np.ndarray:
    """(T, R) precision at the 101 recall levels of one category and area range.

    tps, ignored: (T, n) bool per detection in global score order; counted: objects that count.
    Same arithmetic as ``COCOeval.accumulate`` / ``LVISEval.accumulate``: cumulative sums,
    precision made non-increasing from the right, read at the first detection reaching each
    recall level, 0 beyond the last.
    """
    fps = ~tps & ~ignored
    tp_sum = np.cumsum(tps, axis=1).astype(float)
    fp_sum = np.cumsum(fps, axis=1).astype(float)
    recall = tp_sum / counted
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((tps.shape[0], len(RECALL_THRESHOLDS)))
    n = tps.shape[1]
    for t in range(tps.shape[0]):
        at = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        ok = at < n
        out[t, ok] = precision[t, at[ok]]
    return out


def _mean(s: np.ndarray) -> float:
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0
