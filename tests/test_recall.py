"""The shared class-agnostic recall function on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastsam_train.metrics.recall import ar_curve, average_recall


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
