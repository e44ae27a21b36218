"""Zero-shot instance segmentation with box prompts (FastSAM Table 6).

A detector's boxes (a COCO results file, e.g. ViTDet-H's, supplied by the user) prompt the
everything-mode masks: for each box, the mask with the highest IoU with the filled box is taken
(FastSAM's box prompt, ``fastsam/prompt.py``: box corners rounded to integer pixels with
Python's ``round`` and clipped to the image; the first mask wins a tie), keeping the box's
category and score. The masks a box chooses from are a *pool*: the everything-mode output at a
pool's score threshold and mask cap (``pools``; the official path is conf 0.4 / 300 masks). A
pool is the prefix of the run's masks (by score) above its threshold, at most its cap: greedy
NMS keeps the same boxes above a threshold whatever lower-scored candidates exist, so one run at
the lowest threshold serves every pool. SAM instead decodes one mask per box (``prompted``).
Mask AP is then computed with the official tools' rules, image by image
(``fastsam_train.metrics.instance_ap``: identical to pycocotools ``COCOeval`` on COCO (AP, AP50,
AP75, APs, APm, APl) and the LVIS API's ``LVISEval`` on LVIS (max 300 detections per image,
federated; also APr, APc, APf), tested): each image's masks are matched as soon as they are
chosen, for every pool, and only per-detection flags are kept.

A box on an image where the pool has no mask at all gets no mask and is dropped; the count
is reported (``mask/boxes_without_mask``). Results are segmentation-only (no ``bbox`` key) so
both tools take the mask's area for the area ranges, as detectron2 does for LVIS.

Bad input fails loudly: detections that are not a list of COCO results, a category id the
ground truth does not have (class-agnostic ids or 0-based YOLO ids would otherwise score a
silent 0.000, FastSAM issue #183), an image id that is not in the ground truth, or no
detection on any evaluated image.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.core import EmptyPredictionsError, Prediction
from fastsam_train.masks import bytes_rles, rects_to_rles
from fastsam_train.metrics.instance_ap import InstanceAP
from fastsam_train.metrics.matching import pairwise_iou


def load_detections(source: str | Path | list, gt: dict) -> dict[int, list[dict]]:
    """COCO results (path or list of ``{image_id, category_id, bbox xywh, score}``) grouped by
    image, each image's detections by descending score. Raises ValueError on a malformed entry,
    a category or image id the ground truth lacks."""
    dets = json.loads(Path(source).read_text()) if isinstance(source, str | Path) else source
    if not isinstance(dets, list) or not dets:
        raise ValueError(f"detections must be a non-empty list of COCO results, got "
                         f"{type(dets).__name__} of length {len(dets) if dets else 0}")
    for i, d in enumerate(dets):
        if not isinstance(d, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(d):
            raise ValueError(f"detection {i} is not {{image_id, category_id, bbox, score}}: {d}")
        if len(d["bbox"]) != 4 or min(d["bbox"][2:]) < 0:
            raise ValueError(f"detection {i}: bbox must be [x, y, w, h], got {d['bbox']}")
    cats = {c["id"] for c in gt["categories"]}
    unknown = sorted({d["category_id"] for d in dets} - cats)
    if unknown:
        raise ValueError(
            f"{len(unknown)} detection category ids are not in the ground truth, e.g. "
            f"{unknown[:8]} (ground-truth ids: {min(cats)}..{max(cats)}, {len(cats)} categories)."
            " Map the detector's class indices to the dataset's category ids; class-agnostic "
            "or 0-based ids would score AP 0.000")
    images = {im["id"] for im in gt["images"]}
    stray = sorted({d["image_id"] for d in dets} - images)
    if stray:
        raise ValueError(f"{len(stray)} detection image ids are not in the ground truth, e.g. "
                         f"{stray[:5]} (is the detections file for another split?)")
    by_image: dict[int, list[dict]] = defaultdict(list)
    for d in dets:
        by_image[d["image_id"]].append(d)
    return {k: sorted(v, key=lambda d: -d["score"]) for k, v in by_image.items()}


def box_rles(boxes_xywh: np.ndarray, height: int, width: int) -> list[dict]:
    """Filled boxes as RLEs, as FastSAM's box prompt makes them: corners x1, y1, x2 = x1 + w,
    y2 = y1 + h rounded (half to even, Python's ``round``) and clipped to the image."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(np.round(b[:, 0]), 0, width)
    y1 = np.clip(np.round(b[:, 1]), 0, height)
    x2 = np.clip(np.round(b[:, 0] + b[:, 2]), 0, width)
    y2 = np.clip(np.round(b[:, 1] + b[:, 3]), 0, height)
    rects = np.stack([x1, y1, np.maximum(x2 - x1, 0), np.maximum(y2 - y1, 0)], 1)
    return rects_to_rles(rects, height, width)


def select_masks(rles: list[dict], boxes_xywh: np.ndarray, height: int,
                 width: int) -> tuple[np.ndarray, np.ndarray]:
    """For each box (b, 4) xywh, the index of the mask with the highest IoU with the filled box,
    and that IoU: ((b,) int, (b,) float). ``rles`` must be non-empty."""
    ious = pairwise_iou(bytes_rles(rles), box_rles(boxes_xywh, height, width),
                        [False] * len(boxes_xywh))
    best = ious.argmax(0)
    return best, ious[best, np.arange(len(boxes_xywh))]


def pool_size(scores: np.ndarray, conf: float, max_det: int) -> int:
    """How many of the masks (scores (n,) by descending score) are in the pool of everything
    mode at ``conf`` / ``max_det``: those scoring above ``conf`` (compared in float32, as the
    network's scores are), at most ``max_det``."""
    above = np.asarray(scores, dtype=np.float32) > np.float32(conf)
    return int(min(np.count_nonzero(above), max_det))


def pool_prefix(name: str, first: bool) -> str:
    """Metric prefix of a pool: ``mask`` for the headline pool, ``mask_<name>`` for others."""
    return "mask" if first else f"mask_{name}"


class InstanceEvaluator:
    """Box-prompted mask AP, image by image (``ImageEvaluator`` of eval/core.py).

    gt: COCO-format dict; detections: ``load_detections`` output or its source; api: ``coco``
    (pycocotools COCOeval's rules) or ``lvis`` (LVISEval's, ``max_dets`` per image, default 300);
    pools: {name: {"conf", "max_det"}} (default one pool of every mask), the first giving
    ``mask/...``, the others ``mask_<name>/...``; ``prompted``: the predictions hold one mask
    per detection, in detection order (SAM's box prompts), so no pool or IoU choice applies.
    An image's result holds each pool's match arrays under ``<pool>:<field>``.
    """

    def __init__(self, gt: dict, detections, api: str = "coco", max_dets: int = 300,
                 pools: dict | None = None, prompted: bool = False) -> None:
        if api not in ("coco", "lvis"):
            raise ValueError(f"api must be 'coco' or 'lvis', got {api!r}")
        self.gt, self.api, self.max_dets = gt, api, max_dets
        self.detections = detections if isinstance(detections, dict) else \
            load_detections(detections, gt)
        self.prompted = prompted
        self.pools = {"prompted": {"conf": 0.0, "max_det": None}} if prompted else \
            dict(pools or {"all": {"conf": -1.0, "max_det": None}})
        self._ap = {name: InstanceAP(gt, rules=api, iou_type="segm", max_dets=max_dets)
                    for name in self.pools}
        self._images = next(iter(self._ap.values())).index.images
        self.reset()

    def report_rows(self) -> list[tuple[str, str]]:
        """Our rows in report.md: (label, metric prefix) per pool, or SAM's box prompts."""
        if self.prompted:
            return [("SAM (ours, box prompts)", "mask")]
        return [(f"FastSAM (ours, {name} pool: conf {p['conf']:g}, <= {p['max_det']} masks)",
                 pool_prefix(name, i == 0)) for i, (name, p) in enumerate(self.pools.items())]

    def reset(self) -> None:
        self._seen: set[int] = set()
        self._with_dets = self._boxes = 0
        self._dropped = dict.fromkeys(self.pools, 0)
        for ap in self._ap.values():
            ap.reset()

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        for image, pred in zip(inputs, outputs, strict=True):
            self.add_result(image["id"], self.image_result(image, pred))

    def image_result(self, image: dict, pred: Prediction) -> dict[str, np.ndarray]:
        """Choose each detection box's mask from every pool, match the masks
        (``InstanceAP.image_result``) and count boxes (``boxes``; ``<pool>:dropped``: boxes
        without a mask)."""
        if pred.image_id != image["id"] or pred.image_id not in self._images:
            raise ValueError(f"prediction for image {pred.image_id} given for {image['id']}")
        dets = self.detections.get(pred.image_id, [])
        out = {"boxes": np.int64(len(dets))}
        for name, pool in self.pools.items():
            results = self._choose(pool, pred, dets)
            matched = self._ap[name].image_result(self._images[pred.image_id], results)
            out.update({f"{name}:{k}": v for k, v in matched.items()})
            out[f"{name}:dropped"] = np.int64(len(dets) - len(results))
        return out

    def _choose(self, pool: dict, pred: Prediction, dets: list[dict]) -> list[dict]:
        """Each detection's mask from ``pool`` of ``pred`` (COCO results, with areas)."""
        if not dets or not len(pred):
            return []
        if self.prompted:
            if len(pred) != len(dets) or not np.array_equal(
                    pred.scores, [float(d["score"]) for d in dets]):
                raise ValueError(f"image {pred.image_id}: a prompted model must return one mask "
                                 f"per detection in detection order ({len(dets)} detections, "
                                 f"{len(pred)} masks)")
            best = list(range(len(dets)))
        else:
            n = pool_size(pred.scores, pool["conf"], pool["max_det"] or len(pred))
            if not n:
                return []
            best = select_masks(pred.rles[:n], np.array([d["bbox"] for d in dets]),
                                pred.height, pred.width)[0].tolist()
        return [{"category_id": d["category_id"], "score": float(d["score"]),
                 "segmentation": pred.rles[k], "area": float(pred.areas[k])}
                for d, k in zip(dets, best, strict=True)]

    def add_result(self, image_id: int, result: dict[str, np.ndarray]) -> None:
        if image_id in self._seen:
            raise ValueError(f"image id {image_id} was processed twice")
        self._seen.add(image_id)
        boxes = int(result["boxes"])
        self._boxes += boxes
        self._with_dets += bool(boxes)
        for name, ap in self._ap.items():
            self._dropped[name] += int(result[f"{name}:dropped"])
            prefix = f"{name}:"
            ap.add(image_id, {k[len(prefix):]: v for k, v in result.items()
                              if k.startswith(prefix)})

    def evaluate(self) -> dict[str, float]:
        if not self._seen:
            raise EmptyPredictionsError("no images were processed")
        chosen = {name: self._boxes - dropped for name, dropped in self._dropped.items()}
        if not any(chosen.values()):
            raise EmptyPredictionsError(
                f"no detection box fell on the {len(self._seen)} evaluated images (or the model "
                "found no mask there); refusing to report AP 0.000 - check that the detections "
                "file belongs to this dataset")
        metrics = {"images": float(len(self._seen)),
                   "images_with_boxes": float(self._with_dets)}
        for i, (name, ap) in enumerate(self._ap.items()):
            prefix = pool_prefix(name, i == 0)
            if chosen[name]:
                metrics.update({f"{prefix}/{k}": v for k, v in ap.summary().items()})
            metrics.update({f"{prefix}/boxes": float(self._boxes),
                            f"{prefix}/boxes_without_mask": float(self._dropped[name])})
        return metrics


def instance_pools(pools: dict | None, model) -> dict[str, dict]:
    """The task's pools (``{name: {conf, max_det}}``; None: one pool of the model's run), each
    checked to be reachable from the model's own run (``model.conf`` / ``model.max_det``)."""
    pools = dict(pools) if pools else {"all": {"conf": model.conf, "max_det": model.max_det}}
    for name, pool in pools.items():
        if pool["conf"] < model.conf or pool["max_det"] > model.max_det:
            raise ValueError(
                f"task.pools.{name} (conf {pool['conf']}, max_det {pool['max_det']}) is not "
                f"inside the model's run (model.conf {model.conf}, model.max_det "
                f"{model.max_det}): lower model.conf / raise model.max_det")
    return pools


def for_task(gt: dict, model, *, detections, api: str, max_dets: int,
             pools: dict | None) -> InstanceEvaluator:
    """The instance task's evaluator (conf/task/*_instance.yaml ``evaluator``): ``detections``
    (a results json) loaded against ``gt``; SAM (``model.name``) is prompted with each box, so
    no pools apply; FastSAM chooses among the ``pools`` of its run (``instance_pools``)."""
    prompted = model.name == "sam"
    pools = None if prompted else instance_pools(pools, model)
    return InstanceEvaluator(gt, load_detections(detections, gt), api, max_dets, pools,
                             prompted)


@contextlib.contextmanager
def numpy_float_alias():
    """lvis 0.5.3 (the last release) calls ``np.float``, which NumPy >= 1.24 removed; alias it
    to ``float`` (what it always meant) while the LVIS API runs."""
    added = "float" not in np.__dict__
    if added:
        np.float = float
    try:
        yield
    finally:
        if added:
            del np.float
