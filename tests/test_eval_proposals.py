"""Class-agnostic proposal evaluation: hand-computed cases, OLN's AUC, and equality with plain
pycocotools (useCats=0, loadRes) on the real COCO and LVIS annotation files."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import (
    as_predictions,
    box_gt,
    predictions,
    pycocotools_recall,
    pycocotools_recall_table,
    real_gt,
    subset,
    synthetic_gt,
)

from eval.core import EmptyPredictionsError, evaluate_stream, to_prediction
from eval.proposals import ProposalEvaluator, oln_auc

BOXES = [[(10, 10, 100, 100), (200, 150, 120, 80)], [(50, 60, 150, 150)]]


def box_outputs(gt: dict, shift: int = 0) -> list:
    """Each GT box (shifted right by ``shift``) as a proposal with mask = filled box."""
    stream = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        masks = np.zeros((len(anns), image["height"], image["width"]), bool)
        boxes = []
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            masks[k, y:y + h, x + shift:x + shift + w] = True
            boxes.append([x + shift, y, x + shift + w, y + h])
        out = {"masks": masks, "boxes": np.array(boxes, float).reshape(-1, 4),
               "scores": np.ones(len(anns))}
        stream.append((image, to_prediction(image, out)))
    return stream


def test_perfect_proposals_give_ar_one_and_auc_five_sixths():
    gt = box_gt(BOXES)
    m = evaluate_stream(box_outputs(gt), [ProposalEvaluator(gt)], progress=False)
    for prefix in ("box", "mask"):
        for k in (10, 100, 1000):
            assert m[f"{prefix}/ar_{k}"] == pytest.approx(1.0)
        # AR = 1 from k = 10 on, and OLN pins AR(1) to 0: area = 1 - (1/3) / 2
        assert m[f"{prefix}/auc"] == pytest.approx(5 / 6)
    assert m["images"] == 2 and m["proposals_per_image"] == 1.5


def test_shifted_boxes_hit_half_the_thresholds():
    gt = box_gt([[(10, 10, 100, 100)]])
    # 16 px shift: IoU = 84 / 116 = 0.724, a hit at IoU .50 .. .70 (5 of 10 thresholds)
    m = evaluate_stream(box_outputs(gt, shift=16), [ProposalEvaluator(gt)], progress=False)
    assert m["box/ar_100"] == pytest.approx(0.5) and m["mask/ar_100"] == pytest.approx(0.5)
    assert m["box/ar_l_1000"] == pytest.approx(0.5) and np.isnan(m["box/ar_s_1000"])


def test_oln_auc_reproduces_olns_published_number():
    # OLN's box ARs on COCO VOC -> non-VOC (its tools/compute_auc.py): AUC 24.8 in the paper
    ars = dict(zip((10, 30, 50, 100, 300, 500, 1000),
                   (0.180, 0.265, 0.296, 0.334, 0.390, 0.415, 0.450), strict=True))
    assert oln_auc(ars) == pytest.approx(0.24847, abs=1e-5)
    assert oln_auc(dict.fromkeys(ars, 1.0)) == pytest.approx(5 / 6)


def test_ranking_budget_and_curve():
    gt = box_gt([[(10, 10, 100, 100)]])
    image = gt["images"][0]
    masks = np.zeros((11, 400, 400), bool)
    masks[:10, 300:320, 300:320] = True  # ten decoys, ranked first
    masks[10, 10:110, 10:110] = True
    boxes = np.array([[300, 300, 320, 320]] * 10 + [[10, 10, 110, 110]], float)
    scores = np.r_[np.full(10, 0.9), 0.1]
    pred = to_prediction(image, {"masks": masks, "boxes": boxes, "scores": scores})
    ev = ProposalEvaluator(gt)
    m = evaluate_stream([(image, pred)], [ev], progress=False)
    assert m["mask/ar_10"] == 0.0 and m["mask/ar_100"] == 1.0
    ks, ar = ev.curves["mask"]
    assert list(ar[ks <= 10]) == [0.0] * int((ks <= 10).sum()) and (ar[ks > 10] == 1).all()


@pytest.mark.parametrize("name", ["coco", "lvis"])
def test_equals_plain_pycocotools_on_real_annotations(shared_data, name):
    gt = real_gt(shared_data, name)
    gt = subset(gt, 30)  # the LVIS sample has 100 images; 30 keep the test fast
    outputs = predictions(gt, extra=25, seed=1)
    stream = as_predictions(gt, outputs)
    ev = ProposalEvaluator(gt, frequency_groups=(name == "lvis"))
    ours = evaluate_stream(stream, [ev], progress=False)
    masks = [{"image_id": p.image_id, "score": float(s), "segmentation": r}
             for _, p in stream for r, s in zip(p.rles, p.scores, strict=True)]
    boxes = [{"image_id": p.image_id, "score": float(s), "bbox": [x1, y1, x2 - x1, y2 - y1]}
             for _, p in stream for (x1, y1, x2, y2), s in zip(p.boxes, p.scores, strict=True)]
    for prefix, iou_type, results in (("mask", "segm", masks), ("box", "bbox", boxes)):
        ref = pycocotools_recall(gt, results, iou_type)
        got = [ours[f"{prefix}/ar_{k}"] for k in (10, 100, 1000)]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
        assert 0.2 < got[-1] < 1.0
    if name == "lvis":  # each frequency group: plain pycocotools on that group's objects
        freq = {c["id"]: c["frequency"] for c in gt["categories"]}
        for group in "fcr":
            sub = {**gt, "annotations": [a for a in gt["annotations"]
                                         if freq[a["category_id"]] == group]}
            ref = pycocotools_recall(sub, masks, "segm", (1000,))[0] \
                if sub["annotations"] else float("nan")
            np.testing.assert_allclose(ours[f"mask/ar_{group}_1000"], ref, atol=1e-12)


def results_of(stream) -> tuple[list[dict], list[dict]]:
    """The stream's proposals as COCO results: masks, and the model's boxes (xywh)."""
    masks = [{"image_id": p.image_id, "score": float(s), "segmentation": r}
             for _, p in stream for r, s in zip(p.rles, p.scores, strict=True)]
    boxes = [{"image_id": p.image_id, "score": float(s), "bbox": [x1, y1, x2 - x1, y2 - y1]}
             for _, p in stream for (x1, y1, x2, y2), s in zip(p.boxes, p.scores, strict=True)]
    return masks, boxes


def test_every_number_equals_pycocotools_on_crowd_empty_images_and_ties():
    """AR@k, size rows, frequency groups, the AR-vs-k curve and AUC against COCOeval run on
    the whole set: crowd regions (also as proposals), objects on the area limits, duplicated
    objects, an image without objects, one without proposals, tied scores."""
    gt = synthetic_gt(count=8, seed=2)
    outputs = predictions(gt, extra=60, seed=2, decimals=1)
    outputs[3] = {k: v[:0] for k, v in outputs[3].items()}
    stream = as_predictions(gt, outputs)
    ev = ProposalEvaluator(gt, frequency_groups=True)
    ours = evaluate_stream(stream, [ev], progress=False)
    freq = {c["id"]: c["frequency"] for c in gt["categories"]}
    for prefix, iou_type, results in zip(("mask", "box"), ("segm", "bbox"), results_of(stream),
                                         strict=True):
        ks = ev.curves[prefix][0]
        ref = pycocotools_recall_table(gt, results, iou_type, ks)  # (T, A, K)
        ar = [ref[:, 0, i][ref[:, 0, i] > -1].mean() for i in range(len(ks))]
        np.testing.assert_array_equal(ev.curves[prefix][1], ar)
        for k in (10, 100, 1000):
            assert ours[f"{prefix}/ar_{k}"] == ar[list(ks).index(k)]
        for a, size in enumerate("sml", start=1):
            assert ours[f"{prefix}/ar_{size}_1000"] == ref[:, a, -1][ref[:, a, -1] > -1].mean()
        assert ours[f"{prefix}/auc"] == oln_auc(dict(zip(ks, ar, strict=True)))
        for group in "fcr":
            sub = {**gt, "annotations": [a for a in gt["annotations"]
                                         if freq[a["category_id"]] == group]}
            ref_g = pycocotools_recall(sub, results, iou_type, (1000,))[0]
            assert ours[f"{prefix}/ar_{group}_1000"] == ref_g
        assert 0.2 < ours[f"{prefix}/ar_100"] < 1 and ours[f"{prefix}/ar_s_1000"] > 0


def test_memory_does_not_grow_with_the_number_of_images():
    """Only a few hundred bytes per image outlive it (the RLEs alone are ~50 KB per image)."""
    import tracemalloc

    gt = synthetic_gt(count=40, seed=4)
    outputs = predictions(gt, extra=200, seed=4)
    ev = ProposalEvaluator(gt, frequency_groups=True)
    ev.reset()
    tracemalloc.start()
    try:
        for i, image in enumerate(gt["images"]):
            ev.process([image], [to_prediction(image, outputs[image["id"]])])
            if i == 9:
                base = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 30 * 1024, f"{grown / 30:.0f} bytes kept per image"
    assert ev.evaluate()["images"] == 40


def test_annotation_id_zero_is_still_recalled(shared_data):
    """panopticapi's sample has an annotation with id 0, which plain COCOeval can never
    match (0 marks "unmatched"); our ground truth copy is renumbered."""
    from eval.datasets import load_gt

    raw = load_gt(shared_data / "coco_sample" / "panoptic_coco_detection_format.json")
    assert any(a["id"] == 0 for a in raw["annotations"])
    exact = {im["id"]: {"masks": np.zeros((0, im["height"], im["width"]), bool)}
             for im in raw["images"]}
    from eval_helpers import ann_mask

    for image in raw["images"]:
        anns = [a for a in raw["annotations"] if a["image_id"] == image["id"]]
        masks = np.stack([ann_mask(a, image) for a in anns])
        exact[image["id"]] = {"masks": masks, "scores": np.linspace(1, 0.5, len(anns)),
                              "boxes": np.zeros((len(anns), 4))}
    stream = as_predictions(raw, exact)
    ours = evaluate_stream(stream, [ProposalEvaluator(raw, iou_types=["segm"])],
                           progress=False)
    assert ours["mask/ar_1000"] == pytest.approx(1.0)
    results = [{"image_id": p.image_id, "score": float(s), "segmentation": r}
               for _, p in stream for r, s in zip(p.rles, p.scores, strict=True)]
    assert pycocotools_recall(raw, results, "segm", (1000,))[0] < 1.0


def test_bad_input_is_an_error_not_a_zero():
    gt = box_gt(BOXES)
    image = gt["images"][0]
    empty = {"masks": np.zeros((0, 400, 400), bool), "boxes": np.zeros((0, 4)),
             "scores": np.zeros(0)}
    stream = [(im, to_prediction(im, empty)) for im in gt["images"]]
    with pytest.raises(EmptyPredictionsError, match="no proposals"):
        evaluate_stream(stream, [ProposalEvaluator(gt)], progress=False)
    with pytest.raises(EmptyPredictionsError, match="no images"):
        evaluate_stream([], [ProposalEvaluator(gt)], progress=False)
    stray = {**image, "id": 99}
    with pytest.raises(ValueError, match="does not match the ground truth"):
        evaluate_stream([(stray, to_prediction(stray, empty))], [ProposalEvaluator(gt)],
                        progress=False)
    blank = {"masks": np.zeros((3, 400, 400), bool), "boxes": np.tile([0, 0, 9, 9.0], (3, 1)),
             "scores": np.ones(3)}
    stream = [(im, to_prediction(im, blank)) for im in gt["images"]]
    with pytest.raises(EmptyPredictionsError, match="all 6 proposal masks are empty"):
        evaluate_stream(stream, [ProposalEvaluator(gt)], progress=False)
    boxes_only = evaluate_stream(stream, [ProposalEvaluator(gt, ["bbox"])], progress=False)
    assert boxes_only["box/ar_1000"] == 0.0  # real boxes, genuinely missing every object
    twice = [(image, to_prediction(image, empty))] * 2
    with pytest.raises(ValueError, match="twice"):
        evaluate_stream(twice, [ProposalEvaluator(gt)], progress=False)
    with pytest.raises(ValueError, match="frequency"):
        ProposalEvaluator(gt, frequency_groups=True)
    with pytest.raises(ValueError, match="iou_types"):
        ProposalEvaluator(gt, iou_types=["keypoints"])


def test_benchmark_paths_compute_the_same_numbers(shared_data):
    """data_tools/bench/bench_eval.py's three paths (streaming, the previous in-memory evaluator,
    plain pycocotools) on a few tiled LVIS images with blob proposals: identical AR."""
    from eval_helpers import LVIS_JSON

    from data_tools.bench.bench_eval import run_method

    rows = [run_method(m, str(shared_data / LVIS_JSON), 5, 80, 0)
            for m in ("stream", "current", "pycocotools")]
    for other in rows[1:]:
        np.testing.assert_array_equal(other["ar"] + other["groups"],
                                      rows[0]["ar"] + rows[0]["groups"])
    assert 0 < rows[0]["ar"][-1] < 1 and rows[0]["log_bytes"] > 0
