"""The shared class-agnostic recall function: hand-computed cases, and the streaming engine equal
to COCOeval (pycocotools and faster-coco-eval, useCats=0) on real and adversarial annotations."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastsam_train.metrics.matching import greedy_match, pairwise_iou
from fastsam_train.metrics.recall import (
    RecallAccumulator,
    ar_curve,
    average_recall,
    image_recall,
    recall_table,
)


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
    for i, ann in enumerate(gt["annotations"], start=1):
        ann.setdefault("iscrowd", 0)
        ann["id"] = i  # COCOeval cannot match an object with id 0 (the COCO sample has one)
    gt["images"] = gt["images"][:12]
    props = jittered_proposals(gt, count=60)
    for iou_type in ("segm", "bbox"):
        ref = recall_table(gt, props, iou_type, (1, 10, 100), engine="pycocotools")
        np.testing.assert_array_equal(recall_table(gt, props, iou_type, (1, 10, 100)), ref)
        np.testing.assert_array_equal(
            recall_table(gt, props, iou_type, (1, 10, 100), engine="faster"), ref)
        assert 0.05 < average_recall(gt, props, iou_type, (1, 10, 100))["ar_100"] < 1.0


def hard_case(seed: int) -> tuple[dict, list[dict]]:
    """Synthetic ground truth (crowd, area limits, duplicated objects, an image without objects)
    with proposals whose scores tie; image 3 has no proposals, image 2 only proposals, and an
    image without either is added."""
    from eval_helpers import predictions, synthetic_gt

    gt = synthetic_gt(count=8, seed=seed)
    gt["images"].append({**gt["images"][0], "id": 99})
    outputs = predictions(gt, extra=40, seed=seed, decimals=1)
    props = []
    for image_id, out in outputs.items():
        if image_id in (3, 99):
            continue
        boxes = out["boxes"]
        for r, b, s in zip(out["rles"], boxes, out["scores"], strict=True):
            props.append({"image_id": image_id, "score": float(s), "segmentation": r,
                          "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    return gt, props


@pytest.mark.parametrize("seed", [0, 1])
def test_stream_equals_cocoeval_on_crowd_empty_images_and_ties(seed):
    gt, props = hard_case(seed)
    ks = (1, 3, 10, 30, 100)
    for iou_type in ("segm", "bbox"):
        ref = recall_table(gt, props, iou_type, ks, engine="pycocotools")
        ours = recall_table(gt, props, iou_type, ks)
        np.testing.assert_array_equal(ours, ref)
        assert 0.3 < ref[0, 0, -1] < 1 and ref[:, 1:, -1].max() > 0  # not a trivial case
        counts, curve = ar_curve(gt, props, iou_type, ks)
        ref_curve = [ref[:, 0, i][ref[:, 0, i] > -1].mean() for i in range(len(ks))]
        np.testing.assert_array_equal(curve, ref_curve)


def test_accumulators_of_image_subsets_add_up():
    from eval_helpers import rle

    rng = np.random.default_rng(3)
    whole, parts = RecallAccumulator(20), [RecallAccumulator(20), RecallAccumulator(20)]
    for k in range(6):
        masks = rng.random((12, 40, 40)) < 0.3
        ious = pairwise_iou([rle(m) for m in masks[:8]], [rle(m) for m in masks[8:]], [0] * 4)
        match = image_recall(ious, masks[8:].sum((1, 2)), np.zeros(4, bool))
        whole.add(match)
        parts[k % 2].add(match)
    parts[0].merge(parts[1])
    np.testing.assert_array_equal(parts[0].recall_table((1, 5, 20)),
                                  whole.recall_table((1, 5, 20)))


def test_matching_rules_by_hand():
    # objects 0 and 1 identical (IoU tie for the first proposal): COCOeval gives it the later one,
    # so the second proposal (IoU 0.6 with object 0 only) still recalls object 0 at .50-.60
    ious = np.array([[0.8, 0.8, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.9]])
    crowd = np.array([False, False, True])
    gt_match, dt_match = greedy_match(ious, np.array([False, False, True]), crowd)
    assert gt_match[0].tolist() == [1, 0, 2] and dt_match[0].tolist() == [1, 0, 2]
    assert gt_match[3].tolist() == [-1, 0, 2]  # IoU .65: the 0.6 proposal misses
    match = image_recall(ious, np.array([50.0, 50.0, 500.0]), crowd)
    assert match.counted.tolist() == [2, 2, 0, 0]  # the crowd region never counts
    assert match.ranks[0, 0].tolist() == [1, 0, -1]  # IoU .50: both objects recalled
    assert match.ranks[6, 0].tolist() == [-1, 0, -1]  # IoU .80: only the tie's winner
    assert match.ranks[7, 0].tolist() == [-1, -1, -1]
