"""Inference geometry, post-processing, prompt selection and outputs on hand-made tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fastsam_train.infer import PredictOptions, Predictor, PromptError
from fastsam_train.infer import prompts as P
from fastsam_train.infer.geometry import (
    PAD_VALUE,
    Letterbox,
    box_slices,
    boxes_to_network,
    boxes_to_original,
    letterbox_batch,
    masks_from_prototypes,
    samplers_for,
    snap_boxes_to_border,
)
from fastsam_train.infer.output import to_json
from fastsam_train.infer.postprocess import Segmentation, decode_detections, segment_image
from fastsam_train.masks import decode_rle, encode_masks
from fastsam_train.plots import mask_overlay

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gradient_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256],
                    -1).astype(np.uint8)


# --- letterbox ----------------------------------------------------------------------------------
def test_letterbox_places_each_image_and_maps_boxes_back_exactly():
    images = [gradient_image(200, 300), gradient_image(100, 180)]
    x, boxes = letterbox_batch(images, 256)
    assert x.shape == (2, 3, 192, 256)  # stride-32 frame holding both resized images
    a, b = boxes
    assert a.resized_hw == (171, 256) and a.offset_xy == (0, 10)
    assert b.resized_hw == (142, 256) and b.offset_xy == (0, 25) and b.input_hw == (192, 256)
    x_sq, sq = letterbox_batch(images, 256, square=True)
    assert x_sq.shape == (2, 3, 256, 256) and sq[0].offset_xy == (0, 42)
    left, top, right, bottom = sq[0].content_box
    assert (x_sq[0, :, :top] == PAD_VALUE).all() and (x_sq[0, :, bottom:] == PAD_VALUE).all()
    assert not (x_sq[0, :, top:bottom] == PAD_VALUE).all(0).all(0).any()
    original = torch.tensor([[0.0, 0.0, 300.0, 200.0], [12.5, 7.25, 80.0, 199.0]])
    for lb in sq + [a]:
        hw = lb.orig_hw
        boxes_in = original.clamp(max=torch.tensor([hw[1], hw[0], hw[1], hw[0]]))
        back = boxes_to_original(boxes_to_network(boxes_in, lb), lb)
        torch.testing.assert_close(back, boxes_in, atol=1e-4, rtol=0)
    full = boxes_to_network(torch.tensor([[0.0, 0.0, 300.0, 200.0]]), sq[0])
    assert full.tolist() == [[float(v) for v in sq[0].content_box]]


def test_letterbox_keeps_an_image_already_at_size():
    image = gradient_image(64, 64)
    x, (lb,) = letterbox_batch([image], 64)
    assert lb.offset_xy == (0, 0) and torch.equal(x[0].permute(1, 2, 0), torch.from_numpy(image))


# --- masks from prototypes ----------------------------------------------------------------------
def ramp_prototypes(lb: Letterbox, stride: int, a: float, c: float) -> torch.Tensor:
    """Prototype 0 holds a * (network x) + c at each cell centre; the others are zero."""
    hp, wp = lb.input_hw[0] // stride, lb.input_hw[1] // stride
    x = (torch.arange(wp, dtype=torch.float64) + 0.5) * stride
    protos = torch.zeros(32, hp, wp, dtype=torch.float64)
    protos[0] = (a * x + c)[None].expand(hp, wp)
    return protos.float()


@pytest.mark.parametrize("square", [False, True])
def test_masks_are_sampled_at_the_exact_original_pixel_positions(square):
    """A linear logit ramp is reproduced exactly by bilinear sampling, so each original pixel's
    value tells where it was sampled: at network x = left + (j + 0.5) * nw / w0."""
    _, (lb,) = letterbox_batch([gradient_image(77, 203)], 128, square=square)
    a, c = 0.05, -3.2  # logit 0 at network x = 64
    protos = ramp_prototypes(lb, 4, a, c)
    coeff = torch.zeros(1, 32)
    coeff[0, 0] = 1
    box = torch.tensor([[0.0, 0.0, 203.0, 77.0]])
    (_, masks, prob, _), = masks_from_prototypes(coeff, protos, box, lb, probs=True)
    assert masks.shape == (1, 77, 203) and prob.shape == (1, 77, 203)
    sx, _ = lb.scale_xy
    x_net = lb.offset_xy[0] + (torch.arange(203, dtype=torch.float64) + 0.5) * sx
    inside = (x_net >= 2) & (x_net <= lb.input_hw[1] - 2)  # not clamped at the grid edge
    expected = torch.sigmoid(a * x_net + c).float()
    torch.testing.assert_close(prob[0, 0, inside], expected[inside], atol=1e-5, rtol=0)
    assert torch.equal(masks[0, 0], a * x_net + c > 0)
    assert (masks == masks[:, :1]).all()  # every row the same


def test_sampling_matches_torch_bilinear_without_letterbox():
    lb = Letterbox((64, 96), (64, 96), (0, 0), (64, 96))
    protos = torch.randn(32, 16, 24)
    coeff = torch.randn(3, 32)
    boxes = torch.tensor([[0.0, 0.0, 96.0, 64.0]] * 3)
    (_, masks, prob, _), = masks_from_prototypes(coeff, protos, boxes, lb, probs=True)
    logits = (coeff @ protos.view(32, -1)).view(3, 16, 24)
    ref = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(prob, ref.sigmoid(), atol=1e-5, rtol=0)


def dense_reference(coeff, protos, boxes, lb):
    """Every mask sampled over the whole image, then cropped: the unchunked definition."""
    rows, cols = samplers_for(lb, protos.shape[1:])
    logits = (coeff @ protos.view(32, -1)).view(-1, *protos.shape[1:])
    fy, fx = rows.frac[:, None], cols.frac
    lines = logits[:, rows.lo] * (1 - fy) + logits[:, rows.hi] * fy
    full = lines[..., cols.lo] * (1 - fx) + lines[..., cols.hi] * fx
    keep = torch.zeros_like(full, dtype=torch.bool)
    for k, (r, c) in enumerate(box_slices(boxes, lb.orig_hw)):
        keep[k, r, c] = True
    return (full > 0) & keep, full.sigmoid() * keep


def test_chunked_box_sampling_equals_the_dense_definition_beyond_512_masks():
    _, (lb,) = letterbox_batch([gradient_image(45, 70)], 64)
    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(32, 16, 16, generator=gen)
    n = 600  # more than OpenCV's 512-channel resize limit
    coeff = torch.randn(n, 32, generator=gen)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([70.0, 45.0])
    wh = torch.rand(n, 2, generator=gen) * 50
    boxes = torch.cat([xy - 5, xy + wh], 1)
    ref_masks, ref_prob = dense_reference(coeff, protos, boxes, lb)
    for chunk in (1, 64, 1000):
        parts = list(masks_from_prototypes(coeff, protos, boxes, lb, chunk=chunk, probs=True))
        masks, prob = torch.cat([m for _, m, _, _ in parts]), torch.cat([p for *_, p, _ in parts])
        areas = torch.cat([a for *_, a in parts])
        assert torch.equal(masks, ref_masks) and torch.equal(areas, ref_masks.sum((1, 2)))
        torch.testing.assert_close(prob, ref_prob, atol=1e-6, rtol=0)


def test_box_slices_follow_the_crop_rule():
    slices = box_slices(torch.tensor([[0.5, 1.0, 3.0, 2.2], [-4.0, -1.0, 99.0, 99.0],
                                      [5.0, 5.0, 5.0, 6.0]]), (10, 20))
    assert slices[0] == (slice(1, 3), slice(1, 3))  # pixels i with y1 <= i < y2
    assert slices[1] == (slice(0, 10), slice(0, 20))
    assert slices[2][1] == slice(5, 5)  # empty


# --- border snapping, NMS, per-image post-processing --------------------------------------------
def test_snap_to_border_moves_near_sides_and_fills_near_full_boxes():
    boxes = torch.tensor([[15.0, 30.0, 100.0, 100.0],   # x1 within 20 px -> 0
                          [30.0, 30.0, 190.0, 90.0],    # x2 > 200 - 20 -> 200
                          [30.0, 30.0, 170.0, 70.0],    # untouched
                          [5.0, 3.0, 188.0, 115.0]])    # snaps to the full image
    original = boxes.clone()
    out = snap_boxes_to_border(boxes, (0, 0, 200, 120), threshold=20, full_iou=0.9)
    assert torch.equal(boxes, original)
    assert out.tolist() == [[0, 30, 100, 100], [30, 30, 200, 90], [30, 30, 170, 70],
                            [0, 0, 200, 120]]
    shifted = snap_boxes_to_border(boxes + 10, (10, 10, 210, 130), threshold=20,
                                   full_iou=0.9)  # image inside padding
    assert torch.equal(shifted, out + 10)
    nearly = snap_boxes_to_border(torch.tensor([[25.0, 0.0, 200.0, 120.0]]), (0, 0, 200, 120),
                                  threshold=20, full_iou=0.9)
    assert nearly.tolist() == [[25.0, 0.0, 200.0, 120.0]]  # 25 px from the border, IoU 0.875


def fake_raw(boxes_xyxy: list[list[float]], scores: list[float], coeff: torch.Tensor,
             anchors: int = 8) -> torch.Tensor:
    """(1, 4 + 1 + 32, anchors) network output holding the given detections (rest score 0)."""
    raw = torch.zeros(1, 37, anchors)
    for k, ((x1, y1, x2, y2), s) in enumerate(zip(boxes_xyxy, scores, strict=True)):
        raw[0, :4, k] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        raw[0, 4, k] = s
        raw[0, 5:, k] = coeff[k]
    return raw


def test_decode_detections_thresholds_suppresses_and_caps():
    coeff = torch.eye(32)[:4]
    raw = fake_raw([[0, 0, 10, 10], [0, 0, 10, 9.9], [20, 20, 30, 30], [40, 40, 50, 50]],
                   [0.9, 0.8, 0.7, 0.3], coeff)
    (boxes, scores, coefficients), = decode_detections(raw, conf=0.4, iou=0.5, max_det=10)
    assert scores.tolist() == pytest.approx([0.9, 0.7])  # 0.8 suppressed, 0.3 below conf
    assert boxes.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]
    assert torch.equal(coefficients, coeff[[0, 2]])
    (_, capped, _), = decode_detections(raw, conf=0.1, iou=0.5, max_det=1)
    assert capped.tolist() == pytest.approx([0.9])


class FakeNetwork:
    """Returns the same hand-made detections for every image: prototype 0 is +1 everywhere, so
    a detection's mask is exactly its (snapped) box."""

    def __init__(self, boxes: list[list[float]], scores: list[float]):
        self.boxes, self.scores = boxes, scores

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coeff = torch.zeros(len(self.boxes), 32)
        coeff[:, 0] = 1
        raw = fake_raw(self.boxes, self.scores, coeff).expand(len(x), -1, -1)
        proto = torch.zeros(len(x), 32, x.shape[2] // 4, x.shape[3] // 4)
        proto[:, 0] = 1
        return raw, proto


def test_everything_mode_aligns_masks_and_snaps_every_image_of_a_batch():
    """Two images in one batch, letterboxed differently into a 128 x 128 frame: image 0
    (100 x 200) at rows 32..96, image 1 (200 x 100) at columns 32..96; one network pixel is
    1.5625 original pixels. Border snapping is per image, against each image's own area (the
    official code snapped the first image of a batch only, against the padded frame)."""
    images = [gradient_image(100, 200), gradient_image(200, 100)]
    net = FakeNetwork([[60, 56, 70, 72], [0, 0, 128, 128], [45, 60, 70, 72]], [0.9, 0.8, 0.7])
    predictor = Predictor(net, PredictOptions(imgsz=128, conf=0.5, iou=0.99, square=True))
    seg0, seg1 = predictor.everything(images, probs=True)
    assert seg0.masks.shape == (3, 100, 200) and seg1.masks.shape == (3, 200, 100)
    assert torch.equal(seg0.masks, seg0.probs > 0.5)
    # an interior box: (x - 0, y - 32) x 1.5625 in image 0, and its mask is exactly the box
    assert seg0.boxes[0].tolist() == [93.75, 37.5, 109.375, 62.5]
    expected = torch.zeros(100, 200, dtype=torch.bool)
    expected[38:63, 94:110] = True  # pixels i with y1 <= i < y2, j with x1 <= j < x2
    assert torch.equal(seg0.masks[0], expected)
    # the whole frame snaps to each image's own area
    assert seg0.boxes[1].tolist() == [0, 0, 200, 100] and seg0.masks[1].all()
    assert seg1.boxes[1].tolist() == [0, 0, 100, 200] and seg1.masks[1].all()
    # x1 = 45 is 45 px from image 0's left edge (kept) but 13 px from image 1's (snapped)
    assert seg0.boxes[2, 0].item() == 45 * 1.5625
    assert seg1.boxes[2, 0].item() == 0 and seg1.masks[2, :, 0].any()
    assert predictor.timing.keys() == {"preprocess", "forward", "postprocess"}


def test_rle_output_matches_dense_masks():
    net = FakeNetwork([[10, 10, 50, 40], [60, 0, 64, 64]], [0.9, 0.8])
    predictor = Predictor(net, PredictOptions(imgsz=64, conf=0.5, chunk=1))
    image = gradient_image(48, 64)
    dense, = predictor.everything(image)
    coded, = predictor.everything([image], rle=True)
    assert coded.masks is None and torch.equal(decode_rle(coded.rles), dense.masks)


def test_segment_image_without_detections():
    lb = Letterbox((30, 40), (48, 64), (0, 8), (64, 64))
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 32))
    seg = segment_image(empty, torch.zeros(32, 16, 16), lb, 20.0, 0.9, probs=True)
    assert len(seg) == 0 and seg.masks.shape == (0, 30, 40) and seg.probs.shape == (0, 30, 40)
    assert to_json(seg)["annotations"] == []


# --- prompt selection ---------------------------------------------------------------------------
def nested_masks() -> torch.Tensor:
    """(3, 10, 10): a big square, a medium square inside it, a small square inside that."""
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 2:8, 2:8] = True
    masks[2, 4:6, 4:6] = True
    return masks


def test_point_rules_official_sweep_and_any():
    masks = nested_masks()
    fg_small, bg_medium, fg_big = [4, 4], [2, 2], [0, 0]
    hits = P.point_hits(masks, torch.tensor([fg_small, bg_medium]))
    assert hits.tolist() == [[True, True], [True, True], [True, False]]
    labels = torch.tensor([1, 0])
    assert P.select_points_any(hits, labels).tolist() == [False, False, True]
    assert P.select_points_any(hits, torch.tensor([0, 0])).tolist() == [False, False, False]
    only_bg = P.point_hits(masks, torch.tensor([[9, 9]]))
    assert P.select_points_any(only_bg, torch.tensor([0])).tolist() == [False, True, True]
    # official: big (fg and bg) -> set then clear; medium clears; small sets -> the small square
    merged = P.merge_points_official(masks, torch.tensor([fg_small, bg_medium]), labels)
    assert torch.equal(merged, masks[2])
    merged = P.merge_points_official(masks, torch.tensor([fg_big, [5, 5]]), torch.tensor([1, 0]))
    assert not merged.any()  # the background point lies in the big mask too: it clears it all
    merged = P.merge_points_official(masks, torch.tensor([fg_big, fg_small]), torch.tensor([1, 1]))
    assert torch.equal(merged, masks[0])
    assert not P.merge_points_official(masks[:0], torch.tensor([[1, 1]]), torch.tensor([1])).any()


def test_morphological_cleanup_fills_gaps_and_drops_specks():
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[5:30, 5:30] = True
    mask[15, 5:30] = False  # a one-pixel crack
    mask[35, 35] = True  # a speck
    clean = P.morphological_cleanup(mask)
    assert clean[7:28, 7:28].all() and not clean[35, 35] and not clean[31:, :].any()


def test_box_iou_and_selection():
    masks = nested_masks()
    boxes = torch.tensor([[2.0, 2.0, 8.0, 8.0], [0.0, 0.0, 10.0, 10.0], [4.2, 3.9, 6.0, 6.0]])
    iou = P.box_mask_iou(masks, boxes)
    assert iou[0].tolist() == pytest.approx([36 / 100, 1.0, 4 / 36])
    assert P.select_boxes(masks, boxes).tolist() == [1, 0, 2]


def test_text_scores_softmax_and_cosine():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text = torch.tensor([[0.0, 3.0]])
    cos = P.text_scores(image, text, "cosine")
    assert cos.tolist()[0] == pytest.approx([0.0, 1.0, 2**-0.5])
    soft = P.text_scores(image, text, "softmax")
    assert soft.sum().item() == pytest.approx(1.0)
    assert torch.equal(soft.argmax(1), cos.argmax(1))
    assert soft[0].tolist() == pytest.approx((100 * cos[0]).softmax(0).tolist())
    with pytest.raises(ValueError):
        P.text_scores(image, text, "dot")


def test_masks_to_boxes_and_square_boxes():
    masks = nested_masks()
    masks = torch.cat([masks, torch.zeros(1, 10, 10, dtype=torch.bool)])
    assert P.masks_to_boxes(masks).tolist() == [[0, 0, 10, 10], [2, 2, 8, 8], [4, 4, 6, 6],
                                                [0, 0, 0, 0]]
    assert P.square_boxes(torch.tensor([[0.0, 2.0, 10.0, 6.0]])).tolist() == [[0, -1, 10, 9]]


def test_prompt_checks_give_clear_errors():
    with pytest.raises(PromptError, match="outside the 40x30 image"):
        P.check_points(torch.tensor([[40.0, 3.0]]), torch.tensor([1]), (30, 40))
    with pytest.raises(PromptError, match="2 points but 1 labels"):
        P.check_points(torch.tensor([[1.0, 3.0], [2, 2]]), torch.tensor([1]), (30, 40))
    with pytest.raises(PromptError, match="1 .foreground. or 0"):
        P.check_points(torch.tensor([[1.0, 3.0]]), torch.tensor([2]), (30, 40))
    with pytest.raises(PromptError, match="x1 < x2"):
        P.check_boxes(torch.tensor([[10.0, 0, 5, 8]]), (30, 40))
    with pytest.raises(PromptError, match="outside"):
        P.check_boxes(torch.tensor([[50.0, 0, 60, 8]]), (30, 40))
    with pytest.raises(PromptError, match="non-empty"):
        P.check_texts(["  "])
    seg = Segmentation(torch.zeros(3, 4), torch.ones(3), (10, 10), masks=nested_masks())
    predictor = Predictor(FakeNetwork([], []))
    with pytest.raises(PromptError):
        predictor.points(seg, [[10, 0]])
    assert predictor.points(seg, [[4, 4], [2, 2]], [1, 0]).masks.tolist() == [masks_list(2)]
    assert len(predictor.points(seg, [[4, 4], [2, 2]], [1, 0], mode="any")) == 1
    assert predictor.boxes(seg, [[2, 2, 8, 8], [0, 0, 10, 10]]).masks.shape == (2, 10, 10)


def masks_list(k: int) -> list:
    return nested_masks()[k].tolist()


# --- outputs ------------------------------------------------------------------------------------
def test_rle_round_trip_and_json():
    masks = nested_masks()
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [10, 10] for r in rles)
    assert torch.equal(decode_rle(rles), masks)
    seg = Segmentation(torch.tensor([[0.0, 0, 10, 10], [2, 2, 8, 8], [4, 4, 6, 6]]),
                       torch.tensor([0.9, 0.5, 0.25]), (10, 10), masks=masks)
    doc = to_json(seg, "a.jpg", tags=["box 0", "points", "text: x"])
    assert doc["height"] == 10 and len(doc["annotations"]) == 3
    first = doc["annotations"][1]
    assert first["bbox"] == [2, 2, 6, 6] and first["area"] == 36 and first["score"] == 0.5
    assert first["prompt"] == "points"
    assert torch.equal(decode_rle([a["segmentation"] for a in doc["annotations"]]), masks)


def test_overlay_draws_every_mask_and_the_prompts():
    image = np.zeros((10, 10, 3), np.uint8)
    out = mask_overlay(image, nested_masks(), points=np.array([[1, 1]]), labels=np.array([1]),
                  boxes=np.array([[0, 0, 9, 9]]), contours=False)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[5, 5], out[3, 3])  # small mask drawn over the medium one


def test_predict_yaml_is_what_the_options_and_the_cli_read(tmp_path, monkeypatch):
    from importlib import resources

    import fastsam_train.cli as cli

    yaml_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "predict.yaml"))
    prompts = yaml_cfg.pop("prompts")
    assert yaml_cfg["max_det"] == 300 and yaml_cfg["mask_protocol"] == "exact"
    packaged = resources.files("fastsam_train") / "conf" / "predict.yaml"
    assert Path(str(packaged)).resolve() == (REPO / "conf" / "predict.yaml").resolve()
    args = cli.build_parser().parse_args(["predict", "a.jpg"])
    assert (args.max_det, args.mask_protocol, args.text_crop) == (300, "exact", "official")
    assert args.point_mode == prompts["point_mode"]
    # the CLI's defaults follow the file
    (tmp_path / "conf").mkdir()
    edited = (REPO / "conf" / "predict.yaml").read_text().replace("max_det: 300", "max_det: 7")
    (tmp_path / "conf" / "predict.yaml").write_text(edited)
    monkeypatch.setattr(cli.resources, "files", lambda package: tmp_path)
    assert cli.build_parser().parse_args(["predict", "a.jpg"]).max_det == 7
    assert cli.predict_config()[0].max_det == 7
    (tmp_path / "conf" / "predict.yaml").write_text(edited.replace(
        "mask_protocol: exact", "mask_protocol: officail"))
    with pytest.raises(ValueError, match="one of official, exact; got 'officail'"):
        cli.predict_config()
    (tmp_path / "conf" / "predict.yaml").write_text(edited + "maxdet: 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['maxdet'\]"):
        cli.predict_config()


def test_parallel_mask_assembly_equals_serial():
    """Threads over masks (CPU) give the same masks, probabilities and areas, also inside
    inference mode (thread-local in torch)."""
    torch.manual_seed(0)
    coeff, protos = torch.randn(40, 32), torch.randn(32, 40, 48)
    lb = letterbox_batch([np.zeros((150, 190, 3), np.uint8)], 192)[1][0]
    boxes = torch.tensor([[float(i), float(i), 60.0 + 3 * i, 50.0 + 2 * i] for i in range(40)])
    with torch.inference_mode():
        serial = list(masks_from_prototypes(coeff, protos, boxes, lb, chunk=16, probs=True))
        threaded = list(masks_from_prototypes(coeff, protos, boxes, lb, chunk=16, probs=True,
                                              workers=3))
    for (_, m1, p1, a1), (_, m2, p2, a2) in zip(serial, threaded, strict=True):
        assert torch.equal(m1, m2) and torch.equal(p1, p2) and torch.equal(a1, a2)
        assert torch.equal(a1, m1.flatten(1).sum(1))


def test_compiled_mask_pass_is_exactly_the_torch_sampling():
    """The numba kernel (masks only, CPU) against ``sample_region > 0``, pixel for pixel, on
    random grids, letterbox offsets/scales and boxes; and masks-only assembly against the
    probability path (which samples with torch)."""
    from fastsam_train.infer.geometry import (
        axis_sampler,
        compiled_threshold,
        numpy_samplers,
        sample_region,
    )

    gen = torch.Generator().manual_seed(0)

    def rint(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=gen))

    for _ in range(60):
        hp, wp, h0, w0 = rint(8, 48), rint(8, 48), rint(20, 400), rint(20, 400)
        scale = min(4 * hp / h0, 4 * wp / w0) * (0.5 + 0.5 * float(torch.rand(1, generator=gen)))
        rows = axis_sampler(h0, hp, rint(0, 8), scale, 4.0)
        cols = axis_sampler(w0, wp, rint(0, 8), scale, 4.0)
        logits = F.interpolate(torch.randn(1, 1, 4, 4, generator=gen), size=(hp, wp),
                               mode="bilinear")[0, 0] * 3
        y1, x1 = rint(0, h0), rint(0, w0)
        r, c = slice(y1, rint(y1 + 1, h0 + 1)), slice(x1, rint(x1 + 1, w0 + 1))
        out = torch.zeros(h0, w0, dtype=torch.bool)
        wr, wc = slice(2, hp), slice(1, wp)  # a window of the grid: global tap indices shift
        if rows.lo[r][0] >= 2 and cols.lo[c][0] >= 1:
            area = compiled_threshold(logits[wr, wc], numpy_samplers(rows, cols), r, c, (2, 1),
                                      out)
        else:
            area = compiled_threshold(logits, numpy_samplers(rows, cols), r, c, (0, 0), out)
        expected = sample_region(logits, rows, cols, r, c) > 0
        assert torch.equal(out[r, c], expected) and area == int(expected.sum())
        assert int(out.sum()) == area  # nothing written outside the box
    coeff, protos = torch.randn(30, 32, generator=gen), torch.randn(32, 40, 48, generator=gen)
    lb = letterbox_batch([np.zeros((150, 190, 3), np.uint8)], 192)[1][0]
    boxes = torch.tensor([[2.0 * i, float(i), 40.0 + 5 * i, 30.0 + 4 * i] for i in range(30)])
    boxes[0] = torch.tensor([0.0, 0.0, 190.0, 150.0])  # a whole-image box: full-grid logits
    (_, fast, _, fast_area), = masks_from_prototypes(coeff, protos, boxes, lb, chunk=64)
    (_, ref, _, ref_area), = masks_from_prototypes(coeff, protos, boxes, lb, chunk=64,
                                                   probs=True)
    assert torch.equal(fast, ref) and torch.equal(fast_area, ref_area)


def test_buffer_pool_reuses_only_released_memory_and_clears_it():
    """A stack's memory is handed out again only after every tensor / view of it is gone, and
    comes back all zero even where the caller wrote; kept memory stays under the bound."""
    import gc

    from fastsam_train.infer.memory import BufferPool

    pool = BufferPool(max_bytes=3 << 20)
    shape = (4, 256, 1024)  # 1 MiB of bool
    first = torch.from_numpy(pool.zeros(shape, np.bool_))
    first.fill_(True)  # the caller writes everywhere
    view = first[2]  # a view keeps the memory in use
    address = first.data_ptr()
    del first
    gc.collect()
    second = torch.from_numpy(pool.zeros(shape, np.bool_))
    assert pool.reused == 0 and second.data_ptr() != address and bool(view.all())
    del view
    gc.collect()
    third = torch.from_numpy(pool.zeros(shape, np.bool_))  # now the first stack's memory
    assert pool.reused == 1 and third.data_ptr() == address and not bool(third.any())
    smaller = torch.from_numpy(pool.zeros((2, 256, 1024), np.float32))  # 2 MiB: fresh
    assert pool.reused == 1 and not bool(smaller.any())
    del second, third, smaller
    gc.collect()
    assert sum(len(b) for b in pool._free) <= 3 << 20
    assert pool.zeros((3, 5), np.float32).sum() == 0  # small arrays are plain numpy


def test_masks_are_equal_on_fresh_and_recycled_memory():
    """Everything mode twice on the same input, the first result dropped in between (so the
    second reuses its memory after the caller scribbled on it): identical masks."""
    import gc

    from fastsam_train.infer.memory import POOL

    torch.manual_seed(0)
    coeff, protos = torch.randn(30, 32), torch.randn(32, 48, 64)
    lb = letterbox_batch([np.zeros((180, 250, 3), np.uint8)], 256)[1][0]
    boxes = torch.tensor([[3.0 * i, 2.0 * i, 120.0 + 4 * i, 90.0 + 3 * i] for i in range(30)])
    det = (boxes_to_network(boxes, lb), torch.linspace(1, 0.5, 30), coeff)
    first = segment_image(det, protos, lb, snap_border=0, full_iou=0.9, workers=2)
    expected = first.masks.clone()
    first.masks.fill_(True)
    before = POOL.reused
    del first
    gc.collect()
    second = segment_image(det, protos, lb, snap_border=0, full_iou=0.9, workers=2)
    assert POOL.reused == before + 1
    assert torch.equal(second.masks, expected)
