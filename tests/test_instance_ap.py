"""Streaming instance AP (fastsam_train.metrics.instance_ap) against the references run on the
whole result set: pycocotools COCOeval and lvis-api LVISEval, exact equality."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import coco, predictions, quiet, real_gt, subset, synthetic_gt
from pycocotools.cocoeval import COCOeval

from eval.instance import numpy_float_alias
from fastsam_train.metrics.instance_ap import InstanceAP

COCO_KEYS = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l")
LVIS_KEYS = {"AP": "ap", "AP50": "ap50", "AP75": "ap75", "APs": "ap_s", "APm": "ap_m",
             "APl": "ap_l", "APr": "ap_r", "APc": "ap_c", "APf": "ap_f"}


def detections(gt: dict, seed: int, extra: int = 15, per_image: dict | None = None) -> list:
    """Masks near the objects (some moved, some missing) and random boxes, each with the
    object's category (70 %) or a random one, scores rounded to 0.1 (ties). ``per_image``:
    image id -> number of extra random detections there (e.g. > 300)."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = []
    for image in gt["images"]:
        anns = by_image.get(image["id"], [])
        rles = predictions({**gt, "images": [image], "annotations": anns},
                           extra=(per_image or {}).get(image["id"], extra),
                           seed=seed + image["id"])[image["id"]]["rles"]
        for k, r in enumerate(rles):
            own = k < len(anns) and rng.random() < 0.7
            out.append({"image_id": image["id"], "score": float(np.round(rng.random(), 1)),
                        "category_id": anns[k]["category_id"] if own else int(rng.choice(cats)),
                        "segmentation": r})
    return out


def streamed(gt: dict, results: list[dict], rules: str, iou_type: str = "segm") -> dict:
    ap = InstanceAP(gt, rules, iou_type)
    by_image: dict[int, list] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    images = list(gt["images"])
    np.random.default_rng(0).shuffle(images)  # arrival order must not matter
    for image in images:
        ap.add(image["id"], ap.image_result(image, by_image.get(image["id"], [])))
    return ap.summary()


def cocoeval(gt: dict, results: list[dict], iou_type: str = "segm") -> list[float]:
    coco_gt = coco(gt)
    with quiet():
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


@pytest.mark.parametrize("source", ["synthetic", "coco_sample"])
def test_coco_rules_equal_cocoeval(source, request):
    if source == "synthetic":
        gt = synthetic_gt(count=8, seed=5)
    else:
        gt = real_gt(request.getfixturevalue("shared_data"), "coco")
    results = detections(gt, seed=6)
    ours = streamed(gt, results, "coco")
    assert [ours[k] for k in COCO_KEYS] == cocoeval(gt, results)
    assert 0.02 < ours["ap"] < 1
    boxes = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
              "bbox": _box(r["segmentation"])} for r in results]
    ours = streamed(gt, boxes, "coco", "bbox")
    assert [ours[k] for k in COCO_KEYS] == cocoeval(gt, boxes, "bbox")


def _box(rle: dict) -> list[float]:
    from pycocotools import mask as mask_utils

    return mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lvis 0.5.3's Logger.warn
@pytest.mark.parametrize("source", ["synthetic", "lvis_sample"])
def test_lvis_rules_equal_lvis_api(source, request, tmp_path):
    from lvis import LVIS, LVISEval, LVISResults

    if source == "synthetic":
        gt = synthetic_gt(count=8, seed=7)
    else:
        gt = subset(real_gt(request.getfixturevalue("shared_data"), "lvis"), 10)
    first = gt["images"][0]["id"]
    results = detections(gt, seed=8, per_image={first: 330})  # > 300: the per-image cut
    ours = streamed(gt, results, "lvis")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    lvis_gt = LVIS(str(tmp_path / "gt.json"))
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, [dict(r) for r in results], max_dets=300),
                  "segm")
    with quiet(), numpy_float_alias():
        ev.run()
    ref = ev.get_results()
    assert {name: ours[name] for name in LVIS_KEYS.values()} == \
        {name: float(ref[key]) for key, name in LVIS_KEYS.items()}
    assert 0.02 < ours["ap"] < 1


def test_per_image_results_are_small_and_round_trip_through_the_log(tmp_path):
    from eval.resume import ResultLog

    gt = synthetic_gt(count=4, seed=9)
    results = detections(gt, seed=9, extra=40)
    ap = InstanceAP(gt, "lvis")
    log = ResultLog(tmp_path / "log.bin", {"x": 1})
    for image in gt["images"]:
        dets = [r for r in results if r["image_id"] == image["id"]]
        result = ap.image_result(image, dets)
        assert sum(v.nbytes for v in result.values()) <= 22 * len(dets) + 24 * 8
        log.append(image["id"], [result])
    log.close()
    again = InstanceAP(gt, "lvis")
    for image_id, (result,) in ResultLog(tmp_path / "log.bin", {"x": 1}).records():
        again.add(image_id, result)
    assert again.summary() == streamed(gt, results, "lvis")


def test_lvis_rules_need_federated_fields():
    gt = synthetic_gt(count=2)
    for image in gt["images"]:
        del image["neg_category_ids"]
    with pytest.raises(ValueError, match="neg_category_ids"):
        InstanceAP(gt, "lvis").image_result(gt["images"][0], [])
    with pytest.raises(ValueError, match="frequency"):
        InstanceAP({**gt, "categories": [{"id": 3}]}, "lvis")
    with pytest.raises(ValueError, match="rules"):
        InstanceAP(gt, "voc")
