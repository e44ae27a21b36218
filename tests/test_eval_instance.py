"""Box-prompted instance segmentation: FastSAM's box->mask rule, and mask AP equal to
pycocotools COCOeval / the LVIS API run directly on the real annotation files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import as_predictions, box_gt, predictions, quiet, real_gt, subset
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from eval.core import EmptyPredictionsError, evaluate_stream, to_prediction
from eval.instance import (
    InstanceEvaluator,
    box_rles,
    load_detections,
    numpy_float_alias,
    pool_size,
    select_masks,
)


def dense_select(masks: np.ndarray, box) -> int:
    """FastSAM's box prompt (fastsam/prompt.py box_prompt), written out densely: IoU of each
    mask with the filled box x1, y1, x1 + w, y1 + h, corners rounded with Python's round and
    clipped to the image; the first best mask."""
    h, w = masks.shape[1:]
    x, y, bw, bh = box
    x1, y1 = min(max(round(x), 0), w), min(max(round(y), 0), h)
    x2, y2 = min(max(round(x + bw), 0), w), min(max(round(y + bh), 0), h)
    inter = masks[:, y1:y2, x1:x2].sum((1, 2))
    union = (y2 - y1) * (x2 - x1) + masks.sum((1, 2)) - inter
    return int(np.argmax(inter / union))


def decode(rles):
    return mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()}
                              for r in rles]).transpose(2, 0, 1).astype(bool)


def test_select_masks_is_fastsams_box_rule():
    rng = np.random.default_rng(0)
    h, w = 60, 80
    masks = np.zeros((12, h, w), bool)
    for m in masks:
        x, y = rng.integers(0, w - 5), rng.integers(0, h - 5)
        m[y:y + rng.integers(3, 40), x:x + rng.integers(3, 50)] = True
    rles = [{"size": [h, w], "counts": r["counts"].decode()}
            for r in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)
                                                         .astype(np.uint8)))]
    boxes = np.c_[rng.uniform(-10, w, (40, 2)), rng.uniform(1, 50, (40, 2))]
    best, iou = select_masks(rles, boxes, h, w)
    assert list(best) == [dense_select(masks, b) for b in boxes]
    assert ((0 <= iou) & (iou <= 1)).all()
    # corners are rounded (half to even), not truncated: 10.6 -> 11, 2.5 -> 2, 16.5 -> 16
    filled = mask_utils.decode(box_rles(np.array([[10.6, 2.5, 5.9, 14.0]]), h, w))[..., 0]
    ys, xs = np.nonzero(filled)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (11, 16, 2, 16)


def test_pools_are_score_prefixes_and_box_prompted_masks_map_one_to_one():
    """The official pool (score > conf, at most max_det masks) of one run, beside the whole run;
    a prompted model (SAM) returns one mask per detection."""
    gt = box_gt([[(10, 10, 100, 100)]])
    image = gt["images"][0]
    masks = np.zeros((3, 400, 400), bool)
    masks[0, 0:300, 0:300] = True  # best score, a poor fit
    masks[1, 10:110, 10:110] = True  # the object, scored below the official threshold
    masks[2, 200:250, 200:250] = True
    scores = np.array([0.9, np.float32(0.4), 0.2])  # exactly the threshold: outside the pool
    pred = to_prediction(image, {"masks": masks, "boxes": np.zeros((3, 4)), "scores": scores})
    assert pool_size(pred.scores, 0.4, 300) == 1 and pool_size(pred.scores, 0.001, 1) == 1
    assert pool_size(pred.scores, 0.001, 1000) == 3
    dets = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 100, 100], "score": 0.9}]
    pools = {"official": {"conf": 0.4, "max_det": 300},
             "proposals": {"conf": 0.001, "max_det": 1000}}
    m = evaluate_stream([(image, pred)], [InstanceEvaluator(gt, dets, pools=pools)],
                        progress=False)
    assert m["mask/ap"] == 0 and m["mask_proposals/ap"] == pytest.approx(1.0)
    prompted = to_prediction(image, {"masks": masks[1:2], "boxes": np.zeros((1, 4)),
                                     "scores": np.array([0.9])})
    m = evaluate_stream([(image, prompted)], [InstanceEvaluator(gt, dets, prompted=True)],
                        progress=False)
    assert m["mask/ap"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one mask per detection"):
        evaluate_stream([(image, pred)], [InstanceEvaluator(gt, dets, prompted=True)],
                        progress=False)


def detections_for(gt: dict, seed: int, wrong_every: int = 5) -> list[dict]:
    """Detector-like results: each non-crowd object's box jittered, its category (every
    ``wrong_every``-th another valid one), a random score."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    dets = []
    for k, a in enumerate(a for a in gt["annotations"] if not a["iscrowd"]):
        x, y, bw, bh = np.asarray(a["bbox"]) + rng.normal(0, 2, 4)
        cat = a["category_id"] if k % wrong_every else int(rng.choice(cats))
        dets.append({"image_id": a["image_id"], "category_id": cat,
                     "bbox": [float(x), float(y), float(abs(bw)), float(abs(bh))],
                     "score": float(rng.random())})
    return dets


def reference_results(stream, dets) -> list[dict]:
    """Each detection's mask chosen densely (independent of eval.instance)."""
    preds = {p.image_id: p for _, p in stream}
    results = []
    for d in dets:
        p = preds[d["image_id"]]
        k = dense_select(decode(p.rles), d["bbox"])
        results.append({"image_id": d["image_id"], "category_id": d["category_id"],
                        "score": d["score"], "segmentation": p.rles[k]})
    return results


def test_coco_mask_ap_equals_cocoeval(shared_data):
    gt = real_gt(shared_data, "coco")
    stream = as_predictions(gt, predictions(gt, extra=15, seed=3))
    dets = detections_for(gt, seed=4)
    ours = evaluate_stream(stream, [InstanceEvaluator(gt, dets, "coco")], progress=False)
    from eval_helpers import coco

    coco_gt = coco(gt)
    with quiet():
        ev = COCOeval(coco_gt, coco_gt.loadRes(reference_results(stream, dets)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    keys = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l")
    np.testing.assert_allclose([ours[f"mask/{k}"] for k in keys], ev.stats[:6], atol=1e-12)
    assert 0.1 < ours["mask/ap"] < 1 and ours["mask/boxes"] == len(dets)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lvis 0.5.3's Logger.warn
def test_lvis_mask_ap_equals_lvis_api(shared_data, tmp_path):
    from lvis import LVIS, LVISEval

    gt = subset(real_gt(shared_data, "lvis"), 12)  # LVISEval loops over all 1230 categories
    stream = as_predictions(gt, predictions(gt, extra=15, seed=5))
    dets = detections_for(gt, seed=6, wrong_every=4)
    ours = evaluate_stream(stream, [InstanceEvaluator(gt, dets, "lvis", 300)], progress=False)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ev = LVISEval(LVIS(str(tmp_path / "gt.json")), reference_results(stream, dets), "segm")
    with quiet(), numpy_float_alias():  # lvis 0.5.3 still uses np.float
        ev.run()
    ref = ev.get_results()
    for key, name in (("AP", "ap"), ("AP50", "ap50"), ("APs", "ap_s"), ("APl", "ap_l"),
                      ("APr", "ap_r"), ("APc", "ap_c"), ("APf", "ap_f")):
        np.testing.assert_allclose(ours[f"mask/{name}"], ref[key], atol=1e-12)
    assert 0.05 < ours["mask/ap"] < 1


def test_bad_detections_fail_loudly():
    gt = box_gt([[(10, 10, 100, 100)], [(50, 60, 150, 150)]])
    ok = {"image_id": 1, "category_id": 7, "bbox": [10, 10, 100, 100], "score": 0.9}
    with pytest.raises(ValueError, match="category ids are not in the ground truth"):
        load_detections([ok, {**ok, "category_id": 0}], gt)  # class-agnostic / 0-based
    with pytest.raises(ValueError, match="image ids are not in the ground truth"):
        load_detections([{**ok, "image_id": 42}], gt)
    with pytest.raises(ValueError, match="non-empty list"):
        load_detections([], gt)
    with pytest.raises(ValueError, match="is not"):
        load_detections([{"image_id": 1, "bbox": [0, 0, 1, 1]}], gt)
    with pytest.raises(ValueError, match=r"\[x, y, w, h\]"):
        load_detections([{**ok, "bbox": [10, 10, 5, -3]}], gt)
    with pytest.raises(ValueError, match="api"):
        InstanceEvaluator(gt, [ok], "voc")


def test_no_usable_boxes_is_an_error_and_maskless_boxes_are_counted():
    gt = box_gt([[(10, 10, 100, 100)], [(50, 60, 150, 150)]])
    img1, img2 = gt["images"]
    empty = {"masks": np.zeros((0, 400, 400), bool), "boxes": np.zeros((0, 4)),
             "scores": np.zeros(0)}
    ev = InstanceEvaluator(gt, [{"image_id": 2, "category_id": 7, "bbox": [50, 60, 150, 150],
                                 "score": 0.9}])
    with pytest.raises(EmptyPredictionsError, match="no detection box"):
        evaluate_stream([(img1, to_prediction(img1, empty))], [ev], progress=False)
    mask = np.zeros((1, 400, 400), bool)
    mask[0, 10:110, 10:110] = True
    full = {"masks": mask, "boxes": np.array([[10, 10, 110, 110.0]]), "scores": np.ones(1)}
    dets = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 100, 100], "score": 0.9},
            {"image_id": 2, "category_id": 7, "bbox": [50, 60, 150, 150], "score": 0.8}]
    m = evaluate_stream([(img1, to_prediction(img1, full)), (img2, to_prediction(img2, empty))],
                        [InstanceEvaluator(gt, dets)], progress=False)
    assert m["mask/boxes"] == 2 and m["mask/boxes_without_mask"] == 1
    assert m["mask/ap50"] == pytest.approx(0.5, abs=0.01)  # one of two objects found
