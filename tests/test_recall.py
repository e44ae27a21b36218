"""The shared class-agnostic recall function on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastsam_train.metrics.recall import ar_curve, average_recall, recall_table


def box_gt(boxes_per_image):
    images, anns = [], []
    for image_id, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": image_id, "height": 400, "width": 400})
        for x, y, w, h in boxes:
            mask = np.zeros((400, 400), np.uint8)
            mask[y : y + h, x : x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 7,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": rle})
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "x"}]}


BOXES = [[(10, 10, 100, 100), (200, 150, 120, 80)], [(50, 60, 150, 150)]]


def as_proposals(gt, shift=0, score=1.0):
    return [{"image_id": a["image_id"], "bbox": [a["bbox"][0] + shift, *a["bbox"][1:]],
             "score": score} for a in gt["annotations"]]


def test_perfect_proposals_give_ar_one():
    gt = box_gt(BOXES)
    for iou_type in ("bbox", "segm"):
        props = as_proposals(gt) if iou_type == "bbox" else [
            {"image_id": a["image_id"], "segmentation": a["segmentation"], "score": 1.0}
            for a in gt["annotations"]]
        result = average_recall(gt, props, iou_type)
        assert result["ar_10"] == pytest.approx(1.0) and result["ar_1000"] == pytest.approx(1.0)


def test_shifted_boxes_pass_half_the_thresholds():
    gt = box_gt([[(10, 10, 100, 100)]])
    # shift 16 px: IoU = 84 / 116 = 0.724 -> hits at IoU 0.50..0.70 (5 of 10 thresholds)
    assert average_recall(gt, as_proposals(gt, shift=16), "bbox")["ar_100"] == pytest.approx(0.5)


def test_ranking_and_budget():
    gt = box_gt([[(10, 10, 100, 100)]])
    decoys = [{"image_id": 1, "bbox": [300, 300, 20, 20], "score": 0.9} for _ in range(10)]
    props = decoys + as_proposals(gt, score=0.1)
    result = average_recall(gt, props, "bbox")
    assert result["ar_10"] == 0.0 and result["ar_100"] == pytest.approx(1.0)
    counts, curve = ar_curve(gt, props, "bbox", counts=(5, 10, 11, 100))
    np.testing.assert_allclose(curve, [0, 0, 1, 1])


def test_bad_inputs():
    gt = box_gt(BOXES)
    with pytest.raises(ValueError, match="not in the ground truth"):
        average_recall(gt, [{"image_id": 99, "bbox": [0, 0, 1, 1], "score": 1}], "bbox")
    assert average_recall(gt, [], "bbox")["ar_100"] == 0.0
    with pytest.raises(ValueError, match="iou_type"):
        average_recall(gt, [], "keypoints")


def jittered_proposals(gt: dict, count: int, seed: int = 0) -> list[dict]:
    """Per image: its GT boxes jittered (as RLE masks) plus random boxes, random scores."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    props = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        anns = by_image.get(img["id"], [])
        for k in range(count):
            if k < len(anns):
                x, y, bw, bh = np.array(anns[k]["bbox"]) + rng.normal(0, 4, 4)
            else:
                bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            mask = np.zeros((h, w), np.uint8)
            mask[max(int(y), 0) : max(int(y + bh), 1), max(int(x), 0) : max(int(x + bw), 1)] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            props.append({"image_id": img["id"], "segmentation": rle,
                          "bbox": [float(x), float(y), float(bw), float(bh)],
                          "score": float(rng.random())})
    return props


@pytest.mark.parametrize("name", ["coco", "lvis"])
def test_engines_agree_exactly_on_real_annotations(shared_data, name):
    import json

    path = (shared_data / "coco_sample" / "panoptic_coco_detection_format.json"
            if name == "coco" else shared_data / "lvis_sample" / "lvis_v0.5_val_100.json")
    gt = json.loads(path.read_text())
    for ann in gt["annotations"]:
        ann.setdefault("iscrowd", 0)
    gt["images"] = gt["images"][:12]
    props = jittered_proposals(gt, count=60)
    for iou_type in ("segm", "bbox"):
        slow = recall_table(gt, props, iou_type, (1, 10, 100), engine="pycocotools")
        fast = recall_table(gt, props, iou_type, (1, 10, 100), engine="faster")
        np.testing.assert_array_equal(slow, fast)
        assert 0.05 < average_recall(gt, props, iou_type, (1, 10, 100))["ar_100"] < 1.0
