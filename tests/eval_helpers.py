"""Helpers for the COCO / LVIS evaluation tests: hand-made ground truth and predictions, and the
official tools called directly (the references our evaluators must equal)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
from helpers import compose_eval
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.core import Prediction, to_prediction
from eval.datasets import load_gt

COCO_JSON = Path("coco_sample") / "panoptic_coco_detection_format.json"
LVIS_JSON = Path("lvis_sample") / "lvis_v0.5_val_100.json"


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode()
    return out


def box_gt(boxes_per_image, size: int = 400) -> dict:
    """Square images of ``size``; each (x, y, w, h) becomes a filled-box object of category 7."""
    images, anns = [], []
    for image_id, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": image_id, "height": size, "width": size, "file_name": "x.jpg"})
        for x, y, w, h in boxes:
            mask = np.zeros((size, size), np.uint8)
            mask[y:y + h, x:x + w] = 1
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 7,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": rle(mask)})
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "x"}]}


def real_gt(shared_data: Path, name: str) -> dict:
    """The real COCO sample or LVIS sample json as our datasets load it (iscrowd defaulted),
    annotation ids made 1-based (pycocotools treats id 0 as "unmatched", see test)."""
    gt = load_gt(shared_data / (COCO_JSON if name == "coco" else LVIS_JSON))
    for i, ann in enumerate(gt["annotations"], start=1):
        ann["id"] = i
    return gt


def ann_mask(ann: dict, image: dict) -> np.ndarray:
    seg = ann["segmentation"]
    h, w = image["height"], image["width"]
    if isinstance(seg, list):
        code = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):  # uncompressed RLE (COCO crowd regions)
        code = mask_utils.frPyObjects(seg, h, w)
    else:
        code = seg
    return mask_utils.decode(code).astype(bool)


def predictions(gt: dict, extra: int = 20, seed: int = 0,
                decimals: int | None = None) -> dict[int, dict]:
    """Per image a predictor-style output (RLE): every GT object (some moved by a few pixels,
    some dropped) plus ``extra`` random boxes; random scores (rounded to ``decimals``: ties);
    model boxes = mask boxes + 2 px."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out = {}
    for image in gt["images"]:
        h, w = image["height"], image["width"]
        rles = []
        for ann in by_image[image["id"]]:
            if rng.random() < 0.15:
                continue
            dx, dy = (int(v) for v in rng.integers(-6, 7, 2)) if rng.random() < 0.5 else (0, 0)
            rles.append(moved(ann, image, dx, dy))
        bw, bh = rng.integers(4, w // 2, extra), rng.integers(4, h // 2, extra)
        xy = rng.random((extra, 2)) * np.c_[w - bw, h - bh]
        rand = mask_utils.frPyObjects(np.c_[xy, bw, bh].astype(np.float64), h, w)
        rles += [{"size": r["size"], "counts": r["counts"].decode()} for r in rand]
        boxes = mask_utils.toBbox([{"size": r["size"], "counts": r["counts"].encode()}
                                   for r in rles]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes = np.clip(boxes + [-2, -2, 2, 2], 0, [w, h, w, h])
        scores = rng.random(len(rles))
        scores = scores if decimals is None else np.round(scores, decimals)
        out[image["id"]] = {"rles": rles, "boxes": boxes, "scores": scores}
    return out


def moved(ann: dict, image: dict, dx: int, dy: int) -> dict:
    """The object's mask moved by (dx, dy) pixels, as an RLE."""
    h, w = image["height"], image["width"]
    seg = ann["segmentation"]
    if isinstance(seg, list):
        polys = [(np.asarray(p, np.float64).reshape(-1, 2) + [dx, dy]).ravel().tolist()
                 for p in seg]
        code = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    else:
        m = np.roll(ann_mask(ann, image), (dy, dx), axis=(0, 1))
        code = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [h, w], "counts": code["counts"].decode()}


def subset(gt: dict, count: int) -> dict:
    """The first ``count`` images and their annotations."""
    images = gt["images"][:count]
    ids = {im["id"] for im in images}
    return {**gt, "images": images,
            "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}


def _xyxy(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]


def as_predictions(gt: dict, outputs: dict[int, dict]) -> list[tuple[dict, Prediction]]:
    return [(im, to_prediction(im, outputs[im["id"]], 1000)) for im in gt["images"]]


def quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco(dataset: dict) -> COCO:
    with quiet():
        c = COCO()
        c.dataset = json.loads(json.dumps(dataset))
        c.createIndex()
    return c


def pycocotools_recall_table(gt: dict, results: list[dict], iou_type: str,
                             max_dets=(10, 100, 1000)) -> np.ndarray:
    """Plain pycocotools: loadRes, COCOeval(useCats=0): recall (T, A, len(max_dets))."""
    coco_gt = coco(gt)
    cat = gt["categories"][0]["id"]
    with quiet():
        coco_dt = coco_gt.loadRes([{**r, "category_id": cat} for r in results])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    return ev.eval["recall"][:, 0, :, :]


def pycocotools_recall(gt: dict, results: list[dict], iou_type: str,
                       max_dets=(10, 100, 1000)) -> np.ndarray:
    """Plain pycocotools: AR (all areas) for each max_det."""
    recall = pycocotools_recall_table(gt, results, iou_type, max_dets)[:, 0, :]  # (T, M)
    return np.array([recall[:, i][recall[:, i] > -1].mean() for i in range(len(max_dets))])


def synthetic_gt(count: int = 10, seed: int = 0, height: int = 128, width: int = 160) -> dict:
    """COCO-format ground truth that exercises every rule: polygon, compressed-RLE and crowd
    (uncompressed RLE) objects, boxes of exactly 32x32 and 96x96 pixels (area range limits,
    inclusive), a duplicated object (IoU ties), an image without objects, LVIS-style category
    frequencies and neg / not-exhaustive lists. Image ids 1..count."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"c{c}", "frequency": "fcr"[c % 3]} for c in (3, 5, 8, 13)]
    images, anns = [], []

    def add(image_id, mask, crowd=False, polygon=None):
        area = float(mask.sum())
        ys, xs = np.nonzero(mask)
        bbox = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
        if crowd:  # COCO's crowd regions: uncompressed RLE (column-major run lengths)
            flat = mask.flatten(order="F").astype(np.int8)
            change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
            seg = {"size": [height, width], "counts": np.diff(np.r_[0, change]).tolist()}
        else:
            seg = polygon if polygon is not None else rle(mask)
        anns.append({"id": len(anns) + 1, "image_id": image_id, "iscrowd": int(crowd),
                     "category_id": cats[int(rng.integers(len(cats)))]["id"], "area": area,
                     "bbox": bbox, "segmentation": seg})

    for image_id in range(1, count + 1):
        images.append({"id": image_id, "height": height, "width": width,
                       "file_name": f"{image_id:04d}.png", "neg_category_ids": [5, 13],
                       "not_exhaustive_category_ids": [8]})
        if image_id == 2:
            continue  # no objects
        for side in (32, 96, *rng.integers(4, 60, int(rng.integers(2, 7)))):
            mask = np.zeros((height, width), bool)
            side = int(side)
            y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            mask[y:y + side, x:x + side] = True
            poly = [[x, y, x + side, y, x + side, y + side, x, y + side]] if side % 2 else None
            add(image_id, mask, polygon=poly)
        blob = np.zeros((height, width), np.uint8)
        cv2.circle(blob, (int(rng.integers(20, width - 20)), int(rng.integers(20, height - 20))),
                   int(rng.integers(5, 20)), 1, -1)
        add(image_id, blob.astype(bool))
        add(image_id, blob.astype(bool))  # the same object twice: IoU ties between objects
        crowd = np.zeros((height, width), bool)
        crowd[: height // 3, width // 2:] = True
        add(image_id, crowd, crowd=True)
    return {"images": images, "annotations": anns, "categories": cats}


def write_images(gt: dict, folder: Path) -> Path:
    """One PNG per image record whose pixels all equal the image id (read by IdPredictor)."""
    folder.mkdir(parents=True, exist_ok=True)
    for im in gt["images"]:
        cv2.imwrite(str(folder / im["file_name"]),
                    np.full((im["height"], im["width"], 3), im["id"], np.uint8))
    return folder


class IdPredictor:
    """Test double for the model: reads the image id from the pixels (``write_images``) and
    returns ``outputs[id]`` (RLEs); raises at the ``fail_at``-th image; ``delay`` s per call."""

    def __init__(self, outputs: dict[int, dict], fail_at: int | None = None,
                 delay: float = 0.0) -> None:
        self.outputs, self.fail_at, self.delay = outputs, fail_at, delay
        self.seen: list[int] = []

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        import time

        time.sleep(self.delay)
        outs = []
        for image in images:
            if self.fail_at is not None and len(self.seen) + 1 >= self.fail_at:
                raise RuntimeError(f"interrupted at image {len(self.seen) + 1}")
            self.seen.append(int(image[0, 0, 0]))
            outs.append(self.outputs[self.seen[-1]])
        return outs


CONF = Path(__file__).resolve().parents[1] / "conf"


def fake_run(overrides: list[str], fail_at: int | None = None,
             delay: float = 0.0) -> tuple[dict, IdPredictor]:
    """``eval.run.run`` with ``IdPredictor`` as the model (its outputs: ``predictions`` of the
    task's annotation file, seed 11, tied scores). Returns (metrics, the predictor)."""
    from unittest import mock

    import eval.pipeline as pipeline
    import eval.run as eval_run

    cfg = compose_eval(*overrides)
    gt = load_gt(cfg.task.annotation)
    fake = IdPredictor(predictions(gt, extra=30, seed=11, decimals=1), fail_at, delay)
    with mock.patch.object(pipeline, "build_predictor", lambda *args: fake):
        return eval_run.run(cfg), fake
