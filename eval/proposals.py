"""Class-agnostic object proposals on COCO / LVIS: AR@k and OLN's AUC, boxes and masks.

The everything-mode output of each image is its list of proposals, at most 1000, ranked by
score. Every ground-truth object counts, whatever its category (``useCats=0``); crowd regions
are handled as COCOeval does (a proposal on a crowd region is neither hit nor miss); LVIS
annotations have no crowd flag and count as ``iscrowd=0``. The numbers come from the project's
one recall module (``fastsam_train.metrics.recall``); this module only adapts the predictions
and the ground truth to it.

Reported (``box/`` and ``mask/`` prefixes):

* ``ar_10``, ``ar_100``, ``ar_1000``: recall averaged over IoU .50:.05:.95 with the k
  best-scored proposals per image (FastSAM Table 3); ``ar_s_1000``, ``ar_m_1000``,
  ``ar_l_1000``: COCO's small / medium / large objects (Tables 4-5).
* ``auc``: the area under the AR-vs-#proposals curve as defined by OLN (Kim, Lin, Angelova,
  Kweon, Kuo, "Learning Open-World Object Proposals without Learning to Classify", RA-L 2022,
  arXiv:2108.06753) and computed by OLN's ``tools/compute_auc.py``: AR at
  k = 1, 10, 30, 50, 100, 300, 500, 1000 against log(k) / log(1000), trapezoid rule, with the
  k = 1 point taken as AR = 0 (as OLN's script does). Perfect proposals thus score 5/6, and OLN's
  own box ARs (18.0, 26.5, 29.6, 33.4, 39.0, 41.5, 45.0) give their published 24.8.
* LVIS (``frequency_groups``): ``ar_f_1000``, ``ar_c_1000``, ``ar_r_1000``: recall of the
  objects of frequent / common / rare categories. Decision: for group g the ground truth is
  restricted to annotations whose category has frequency g (images and proposals unchanged);
  proposals that cover objects of other groups are simply not counted as hits.

Streaming: each image is matched against its ground truth as soon as it is predicted
(``fastsam_train.metrics.recall.image_recall``: COCOeval's per-image matching) and only the rank
of the proposal that recalls each object, per IoU threshold and area range, is kept (a few KB,
written to the run's per-image log, eval/resume.py); the RLEs are dropped. The recall arrays
are folded into fixed-size histograms, so memory does not grow with the number of images and
the numbers equal COCOeval's (``useCats=0``) on the evaluated images.

Guards: an image id absent from the ground truth raises ValueError; no proposals at all, or
only empty masks, raise ``EmptyPredictionsError`` instead of reporting AR 0.000
(``mask/empty_fraction`` gives the share of empty masks otherwise); an image that yields no
proposals counts as all misses (its objects stay in the denominator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from eval.core import EmptyPredictionsError, Prediction
from fastsam_train.metrics.matching import (
    AREA_RANGES,
    GroundTruthIndex,
    gt_regions,
    pairwise_iou,
)
from fastsam_train.metrics.recall import (
    ImageRecall,
    RecallAccumulator,
    ar_metrics,
    image_recall,
    mean_valid,
)

OLN_AUC_KS = (1, 10, 30, 50, 100, 300, 500, 1000)
CURVE_KS = (1, 2, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000)  # the AR-vs-#proposals plot
PREFIX = {"bbox": "box", "segm": "mask"}
FREQUENCIES = ("f", "c", "r")


def oln_auc(ar_at: Mapping[int, float], ks: Sequence[int] = OLN_AUC_KS) -> float:
    """OLN's AUC of AR(k): trapezoid over x = log(k) / log(max k), with AR(ks[0]) := 0.

    ar_at: AR for every k in ``ks[1:]`` (fractions). Returns a fraction in [0, 1).
    """
    x = np.log(np.asarray(ks, dtype=np.float64)) / np.log(ks[-1])
    y = np.array([0.0] + [float(ar_at[k]) for k in ks[1:]])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


class ProposalEvaluator:
    """Class-agnostic proposal recall, image by image (``ImageEvaluator`` of eval/core.py).

    gt: COCO-format dict (LVIS works; its categories need ``frequency`` for
    ``frequency_groups``). iou_types: ``bbox`` and/or ``segm``. max_dets: the reported k (the
    largest also caps the curve). box_source: ``model`` (the predictor's boxes) or ``mask``
    (each mask's tight box). After ``evaluate()``, ``curves[prefix] = (ks, ar)`` holds the
    AR-vs-#proposals curve.
    """

    def __init__(self, gt: dict, iou_types: Sequence[str] = ("bbox", "segm"),
                 max_dets: Sequence[int] = (10, 100, 1000), frequency_groups: bool = False,
                 box_source: str = "model") -> None:
        if box_source not in ("model", "mask"):
            raise ValueError(f"box_source must be 'model' or 'mask', got {box_source!r}")
        bad = set(iou_types) - set(PREFIX)
        if bad or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of {sorted(PREFIX)}")
        if frequency_groups and not all("frequency" in c for c in gt["categories"]):
            raise ValueError("frequency_groups needs LVIS categories (with 'frequency')")
        self.iou_types, self.box_source = tuple(iou_types), box_source
        self.max_dets = tuple(sorted(max_dets))
        self.index = GroundTruthIndex(gt)
        # table name -> (objects kept: category frequency or None for all, area ranges)
        self.tables = {"all": (None, AREA_RANGES)}
        if frequency_groups:
            self._frequency = {c["id"]: c["frequency"] for c in gt["categories"]}
            self.tables.update({g: (g, AREA_RANGES[:1]) for g in FREQUENCIES})
        self.reset()

    def reset(self) -> None:
        self._seen: set[int] = set()
        self._proposals = self._empty_masks = 0
        top = self.max_dets[-1]
        self._acc = {(PREFIX[t], name): RecallAccumulator(top, len(ranges))
                     for t in self.iou_types for name, (_, ranges) in self.tables.items()}
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        for image, pred in zip(inputs, outputs, strict=True):
            self.add_result(image["id"], self.image_result(image, pred))

    def image_result(self, image: dict, pred: Prediction) -> dict[str, np.ndarray]:
        """Match one image: per IoU type and table, ``<prefix>/<table>/ranks`` (10, A, G) and
        ``.../counted`` (A,) (see ``ImageRecall``), plus the proposal counts."""
        iid = pred.image_id
        if iid not in self.index or iid != image["id"]:
            raise ValueError(f"prediction for image id {iid} does not match the ground truth "
                             f"(record id {image['id']})")
        n = min(len(pred), self.max_dets[-1])
        anns = self.index.annotations(iid)
        areas = np.array([a["area"] for a in anns], np.float64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], np.bool_)
        out = {"proposals": np.int64(n), "empty_masks": np.int64((pred.areas[:n] == 0).sum())}
        rank_type = np.int16 if self.max_dets[-1] <= np.iinfo(np.int16).max else np.int32
        for iou_type in self.iou_types:
            ious = pairwise_iou(self._regions(pred, n, iou_type),
                                gt_regions(anns, pred.height, pred.width, iou_type), crowd)
            for name, (group, ranges) in self.tables.items():
                cols = np.ones(len(anns), bool) if group is None else np.array(
                    [self._frequency.get(a["category_id"]) == group for a in anns], bool)
                match = image_recall(ious[:, cols], areas[cols], crowd[cols], ranges)
                out[f"{PREFIX[iou_type]}/{name}/ranks"] = match.ranks.astype(rank_type)
                out[f"{PREFIX[iou_type]}/{name}/counted"] = match.counted
        return out

    def _regions(self, pred: Prediction, n: int, iou_type: str):
        if iou_type == "segm":
            return pred.rles[:n]
        if self.box_source == "mask":
            return pred.mask_boxes[:n]
        return np.concatenate([pred.boxes[:n, :2], pred.boxes[:n, 2:] - pred.boxes[:n, :2]],
                              axis=1)

    def add_result(self, image_id: int, result: dict[str, np.ndarray]) -> None:
        if image_id in self._seen:
            raise ValueError(f"image id {image_id} was processed twice")
        self._seen.add(image_id)
        self._proposals += int(result["proposals"])
        self._empty_masks += int(result["empty_masks"])
        for (prefix, name), acc in self._acc.items():
            acc.add(ImageRecall(result[f"{prefix}/{name}/ranks"],
                                result[f"{prefix}/{name}/counted"]))

    def evaluate(self) -> dict[str, float]:
        if not self._seen:
            raise EmptyPredictionsError("no images were processed")
        if not self._proposals:
            raise EmptyPredictionsError(
                f"the predictor returned no proposals on any of the {len(self._seen)} images "
                "(check the score threshold `model.conf` and the weights); refusing to report "
                "AR 0.000")
        total = self._proposals
        if "segm" in self.iou_types and self._empty_masks == total:
            raise EmptyPredictionsError(
                f"all {total} proposal masks are empty, so mask AR would be 0.000; check the "
                "predictor's masks (or evaluate boxes only: task.iou_types=[bbox])")
        top = self.max_dets[-1]
        ks = tuple(sorted({k for k in (*self.max_dets, *OLN_AUC_KS, *CURVE_KS) if k <= top}))
        out: dict[str, float] = {"images": float(len(self._seen)),
                                 "proposals_per_image": total / len(self._seen)}
        if "segm" in self.iou_types:
            out["mask/empty_fraction"] = self._empty_masks / total
        for iou_type in self.iou_types:
            out.update(self._evaluate_type(PREFIX[iou_type], ks, top))
        return out

    def _evaluate_type(self, prefix: str, ks: tuple[int, ...], top: int) -> dict[str, float]:
        ar = ar_metrics(self._acc[prefix, "all"].recall_table(ks), ks)
        out = {f"{prefix}/ar_{k}": ar[f"ar_{k}"] for k in self.max_dets}
        out.update({f"{prefix}/ar_{s}_{top}": ar[f"ar_{s}_{top}"] for s in "sml"})
        if top >= OLN_AUC_KS[-1]:
            out[f"{prefix}/auc"] = oln_auc({k: ar[f"ar_{k}"] for k in OLN_AUC_KS[1:]})
        self.curves[prefix] = (np.array(ks), np.array([ar[f"ar_{k}"] for k in ks]))
        for group in [name for name in self.tables if name != "all"]:
            table = self._acc[prefix, group].recall_table((top,))
            out[f"{prefix}/ar_{group}_{top}"] = mean_valid(table[:, 0, 0])
        return out


def for_task(gt: dict, model, **options) -> ProposalEvaluator:
    """The proposal tasks' evaluator (conf/task/*_ar.yaml ``evaluator``; ``options``: its
    keyword arguments). Proposals are scored the same for every model."""
    return ProposalEvaluator(gt, **options)
