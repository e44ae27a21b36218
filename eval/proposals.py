"""Class-agnostic object proposals on COCO / LVIS: AR@k and OLN's AUC, boxes and masks.

The everything-mode output of each image is its list of proposals, at most 1000, ranked by
score. Every ground-truth object counts, whatever its category (``useCats=0``); crowd regions
are handled as COCOeval does (a proposal on a crowd region is neither hit nor miss); LVIS
annotations have no crowd flag and count as ``iscrowd=0``. The numbers come from the project's
one recall function (``fastsam_train.metrics.recall.average_recall``); this module only adapts
the predictions and the ground truth to it.

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

The ground truth is cut to the evaluated images, with annotation ids renumbered 1..N (COCOeval
marks "unmatched" with id 0, so an object with id 0 could never be recalled).

Guards: an image id absent from the ground truth raises ValueError; no proposals at all, or
only empty masks, raise ``EmptyPredictionsError`` instead of reporting AR 0.000
(``mask/empty_fraction`` gives the share of empty masks otherwise); an image that yields no
proposals counts as all misses (its objects stay in the denominator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from eval.core import EmptyPredictionsError, Prediction, restrict_gt
from fastsam_train.metrics.recall import average_recall

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
    """Class-agnostic proposal recall (evaluator protocol: reset / process / evaluate).

    gt: COCO-format dict (LVIS works; its categories need ``frequency`` for
    ``frequency_groups``). iou_types: ``bbox`` and/or ``segm``. max_dets: the reported k (the
    largest also caps the curve). box_source: ``model`` (the predictor's boxes) or ``mask``
    (each mask's tight box). engine: ``faster`` or ``pycocotools`` (identical numbers).
    After ``evaluate()``, ``curves[prefix] = (ks, ar)`` holds the AR-vs-#proposals curve.
    """

    def __init__(self, gt: dict, iou_types: Sequence[str] = ("bbox", "segm"),
                 max_dets: Sequence[int] = (10, 100, 1000), frequency_groups: bool = False,
                 box_source: str = "model", engine: str = "faster") -> None:
        if box_source not in ("model", "mask"):
            raise ValueError(f"box_source must be 'model' or 'mask', got {box_source!r}")
        bad = set(iou_types) - set(PREFIX)
        if bad or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of {sorted(PREFIX)}")
        if frequency_groups and not all("frequency" in c for c in gt["categories"]):
            raise ValueError("frequency_groups needs LVIS categories (with 'frequency')")
        self.gt, self.iou_types, self.engine = gt, tuple(iou_types), engine
        self.max_dets = tuple(sorted(max_dets))
        self.frequency_groups, self.box_source = frequency_groups, box_source
        self._gt_ids = {im["id"] for im in gt["images"]}
        self.reset()

    def reset(self) -> None:
        self._counts: dict[int, int] = {}
        self._empty_masks = 0
        self._proposals: dict[str, list[dict]] = {t: [] for t in self.iou_types}
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        for image, pred in zip(inputs, outputs, strict=True):
            if pred.image_id not in self._gt_ids or pred.image_id != image["id"]:
                raise ValueError(f"prediction for image id {pred.image_id} does not match the "
                                 f"ground truth (record id {image['id']})")
            if pred.image_id in self._counts:
                raise ValueError(f"image id {pred.image_id} was processed twice")
            self._counts[pred.image_id] = len(pred)
            self._add(pred)

    def _add(self, pred: Prediction) -> None:
        n, iid = min(len(pred), self.max_dets[-1]), pred.image_id
        self._empty_masks += int((pred.areas[:n] == 0).sum())
        scores = pred.scores[:n].tolist()
        if "segm" in self._proposals:
            self._proposals["segm"].extend(
                {"image_id": iid, "score": s, "segmentation": r, "area": a, "bbox": b}
                for s, r, a, b in zip(scores, pred.rles[:n], pred.areas[:n].tolist(),
                                      pred.mask_boxes[:n].tolist(), strict=True))
        if "bbox" in self._proposals:
            boxes = pred.mask_boxes[:n] if self.box_source == "mask" else np.concatenate(
                [pred.boxes[:n, :2], pred.boxes[:n, 2:] - pred.boxes[:n, :2]], axis=1)
            self._proposals["bbox"].extend(
                {"image_id": iid, "score": s, "bbox": b}
                for s, b in zip(scores, boxes.tolist(), strict=True))

    def evaluate(self) -> dict[str, float]:
        if not self._counts:
            raise EmptyPredictionsError("no images were processed")
        if not any(self._counts.values()):
            raise EmptyPredictionsError(
                f"the predictor returned no proposals on any of the {len(self._counts)} images "
                "(check the score threshold `model.conf` and the weights); refusing to report "
                "AR 0.000")
        top = self.max_dets[-1]
        total = sum(min(n, top) for n in self._counts.values())
        if "segm" in self.iou_types and self._empty_masks == total:
            raise EmptyPredictionsError(
                f"all {total} proposal masks are empty, so mask AR would be 0.000; check the "
                "predictor's masks (or evaluate boxes only: task.iou_types=[bbox])")
        gt = restrict_gt(self.gt, self._counts)
        ks = tuple(sorted({k for k in (*self.max_dets, *OLN_AUC_KS, *CURVE_KS) if k <= top}))
        out: dict[str, float] = {"images": float(len(self._counts)),
                                 "proposals_per_image": total / len(self._counts)}
        if "segm" in self.iou_types:
            out["mask/empty_fraction"] = self._empty_masks / total
        for iou_type in self.iou_types:
            out.update(self._evaluate_type(gt, iou_type, ks, top))
        return out

    def _evaluate_type(self, gt: dict, iou_type: str, ks: tuple[int, ...], top: int) -> dict:
        prefix, props = PREFIX[iou_type], self._proposals[iou_type]
        ar = average_recall(gt, props, iou_type, ks, self.engine)
        out = {f"{prefix}/ar_{k}": ar[f"ar_{k}"] for k in self.max_dets}
        out.update({f"{prefix}/ar_{s}_{top}": ar[f"ar_{s}_{top}"] for s in "sml"})
        if top >= OLN_AUC_KS[-1]:
            out[f"{prefix}/auc"] = oln_auc({k: ar[f"ar_{k}"] for k in OLN_AUC_KS[1:]})
        self.curves[prefix] = (np.array(ks), np.array([ar[f"ar_{k}"] for k in ks]))
        if self.frequency_groups:
            freq = {c["id"]: c["frequency"] for c in gt["categories"]}
            for group in FREQUENCIES:
                sub = restrict_gt(gt, self._counts, lambda a, g=group: freq[a["category_id"]] == g)
                value = average_recall(sub, props, iou_type, (top,), self.engine)[f"ar_{top}"] \
                    if sub["annotations"] else float("nan")
                out[f"{prefix}/ar_{group}_{top}"] = value
        return out
