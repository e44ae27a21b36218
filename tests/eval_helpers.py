"""Helpers for the COCO / LVIS evaluation tests: hand-made ground truth and predictions, and the
official tools called directly (the references our evaluators must equal)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
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


def predictions(gt: dict, extra: int = 20, seed: int = 0) -> dict[int, dict]:
    """Per image a predictor-style output (RLE): every GT object (some moved by a few pixels,
    some dropped) plus ``extra`` random boxes; random scores; model boxes = mask boxes + 2 px."""
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
        out[image["id"]] = {"rles": rles, "boxes": boxes, "scores": rng.random(len(rles))}
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


def pycocotools_recall(gt: dict, results: list[dict], iou_type: str,
                       max_dets=(10, 100, 1000)) -> np.ndarray:
    """Plain pycocotools: loadRes, COCOeval(useCats=0): AR (all areas) for each max_det."""
    coco_gt = coco(gt)
    cat = gt["categories"][0]["id"]
    with quiet():
        coco_dt = coco_gt.loadRes([{**r, "category_id": cat} for r in results])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"][:, 0, 0, :]  # (T, M)
    return np.array([recall[:, i][recall[:, i] > -1].mean() for i in range(len(max_dets))])
