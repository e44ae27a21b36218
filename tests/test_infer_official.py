"""The ``official`` mask protocol against a reference of ultralytics 8.0.120 + FastSAM written
here from the steps' definitions (LetterBox, non_max_suppression, FastSAM's border snap,
scale_boxes, process_mask_native, crop_mask), in plain torch / OpenCV: identical boxes, masks
and probability maps, dense and RLE, on sizes whose letterbox padding is a fractional number of
prototype cells (1500 x 2250, and 150 x 225 at imgsz 128) and a whole one (1500 x 2000,
150 x 200)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from fastsam_train.infer import PredictOptions, Predictor
from fastsam_train.infer.official import prototype_crop
from fastsam_train.masks import decode_rle

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- the reference: 8.0.120's steps from their definitions --------------------------------------
def ref_letterbox(image: np.ndarray, imgsz: int, auto: bool, stride: int = 32) -> np.ndarray:
    """LetterBox(new_shape=imgsz, auto): scale r = min(imgsz / h, imgsz / w); resized size
    (round(w r), round(h r)), INTER_LINEAR; padding to imgsz (auto: to a stride multiple) split
    round(d / 2 - 0.1) before, round(d / 2 + 0.1) after, value 114."""
    import cv2

    h, w = image.shape[:2]
    r = min(imgsz / h, imgsz / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    dw, dh = imgsz - nw, imgsz - nh
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (nw, nh):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh / 2 - 0.1)), int(round(dh / 2 + 0.1))
    left, right = int(round(dw / 2 - 0.1)), int(round(dw / 2 + 0.1))
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(114, 114, 114))


def ref_nms(raw: torch.Tensor, conf: float, iou: float, max_det: int) -> torch.Tensor:
    """non_max_suppression for one class: rows (x1, y1, x2, y2, score, 0, coefficients...) of
    the candidates above ``conf``, sorted by score, torchvision NMS, the first ``max_det``."""
    x = raw.transpose(0, 1)
    x = x[x[:, 4:5].amax(1) > conf]
    xy, wh = x[:, :2], x[:, 2:4]
    box = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    score = x[:, 4:5]
    rows = torch.cat([box, score, torch.zeros_like(score), x[:, 5:]], 1)[score.view(-1) > conf]
    rows = rows[rows[:, 4].argsort(descending=True)]
    return rows[torchvision.ops.nms(rows[:, :4], rows[:, 4], iou)[:max_det]]


def ref_snap(rows: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
    """FastSAM's adjust_bboxes_to_image_border (20 px, in the network frame, in place) and the
    boxes with IoU > 0.9 with the whole frame replaced by it."""
    h, w = frame_hw
    b = rows[:, :4]
    b[:, 0] = torch.where(b[:, 0] < 20, 0, b[:, 0])
    b[:, 1] = torch.where(b[:, 1] < 20, 0, b[:, 1])
    b[:, 2] = torch.where(b[:, 2] > w - 20, w, b[:, 2])
    b[:, 3] = torch.where(b[:, 3] > h - 20, h, b[:, 3])
    full = torch.tensor([0.0, 0.0, w, h])
    ix = (torch.minimum(full[2], b[:, 2]) - torch.maximum(full[0], b[:, 0])).clamp(0)
    iy = (torch.minimum(full[3], b[:, 3]) - torch.maximum(full[1], b[:, 1])).clamp(0)
    inter = ix * iy
    union = (full[2] - full[0]) * (full[3] - full[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) \
        - inter
    rows[inter / union > 0.9, :4] = full
    return rows


def ref_scale_boxes(frame_hw, boxes: torch.Tensor, orig_hw) -> torch.Tensor:
    """scale_boxes: gain = min of the two ratios, pad from the unrounded resized size,
    (box - pad) / gain, clipped to the image."""
    gain = min(frame_hw[0] / orig_hw[0], frame_hw[1] / orig_hw[1])
    px = round((frame_hw[1] - orig_hw[1] * gain) / 2 - 0.1)
    py = round((frame_hw[0] - orig_hw[0] * gain) / 2 - 0.1)
    boxes[:, [0, 2]] -= px
    boxes[:, [1, 3]] -= py
    boxes[:, :4] /= gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, orig_hw[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, orig_hw[0])
    return boxes


def ref_process_mask_native(protos, coefficients, boxes, orig_hw):
    """sigmoid(coefficients @ prototypes), padding cropped at int(pad), bilinear (align_corners
    False) to the image, zero outside x1 <= x < x2, y1 <= y < y2. Returns the probabilities."""
    c, mh, mw = protos.shape
    probs = (coefficients @ protos.float().view(c, -1)).sigmoid().view(-1, mh, mw)
    gain = min(mh / orig_hw[0], mw / orig_hw[1])
    pw, ph = (mw - orig_hw[1] * gain) / 2, (mh - orig_hw[0] * gain) / 2
    probs = probs[:, int(ph):int(mh - ph), int(pw):int(mw - pw)]
    probs = F.interpolate(probs[None], orig_hw, mode="bilinear", align_corners=False)[0]
    x1, y1, x2, y2 = torch.chunk(boxes[:, :, None], 4, 1)
    cols = torch.arange(orig_hw[1], dtype=x1.dtype)[None, None, :]
    rows = torch.arange(orig_hw[0], dtype=x1.dtype)[None, :, None]
    return probs * ((cols >= x1) * (cols < x2) * (rows >= y1) * (rows < y2))


def reference(raw, proto, frame_hw, orig_hw, conf, iou, max_det):
    rows = ref_snap(ref_nms(raw, conf, iou, max_det), frame_hw)
    boxes = ref_scale_boxes(frame_hw, rows[:, :4].clone(), orig_hw)
    probs = ref_process_mask_native(proto, rows[:, 6:], boxes, orig_hw)
    return boxes, rows[:, 4], probs


# --- a network with detections that exercise every step ----------------------------------------
class RandomHead:
    """Per call, seeded detections in the input frame (some near its border, one nearly the
    whole frame) and smooth random prototypes at stride 4; keeps its input and outputs."""

    def __init__(self, n: int = 40, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        self.inputs, self.outputs = [], []

    def __call__(self, x: torch.Tensor):
        g = torch.Generator().manual_seed(self.seed)
        b, _, h, w = x.shape
        raw = torch.zeros(b, 37, self.n + 8)
        xy1 = torch.rand(b, self.n, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9]) - 4
        wh = torch.rand(b, self.n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6]) + 6
        xy1[:, :2] = torch.tensor([3.0, 2.0])  # near the top-left: snaps
        wh[:, 0] = torch.tensor([w * 0.3, h * 0.2])
        wh[:, 1] = torch.tensor([w - 6.0, h - 5.0])  # ... and nearly the whole frame
        raw[:, 0:2, :self.n] = (xy1 + wh / 2).transpose(1, 2)
        raw[:, 2:4, :self.n] = wh.transpose(1, 2)
        raw[:, 4, :self.n] = torch.rand(b, self.n, generator=g) * 0.9 + 0.05
        raw[:, 4, :2] = torch.tensor([0.97, 0.96])
        raw[:, 5:, :self.n] = torch.randn(b, 32, self.n, generator=g) * 1.5
        coarse = torch.randn(b, 32, max(h // 32, 1), max(w // 32, 1), generator=g)
        proto = F.interpolate(coarse, (h // 4, w // 4), mode="bicubic", align_corners=False)
        self.inputs.append(x.clone())
        self.outputs.append((raw, proto))
        return raw.to(x.device), proto.to(x.device)


def as_input(letterboxed: np.ndarray) -> torch.Tensor:
    """The predictor's network input for a letterboxed uint8 image: float / 255, (H, W, 3)."""
    return torch.from_numpy(letterboxed).float() / 255


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 255 // w, y * 255 // h, (3 * x + 5 * y) % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("hw", "imgsz", "fractional"), [
    ((150, 225), 128, True), ((150, 200), 128, False),
    ((1500, 2250), 1024, True), ((1500, 2000), 1024, False)])
def test_official_protocol_equals_ultralytics_8_0_120(hw, imgsz, fractional, device):
    image = gradient(*hw)
    net = RandomHead(n=40 if imgsz < 1024 else 14)
    predictor = Predictor(net, PredictOptions(imgsz=imgsz, conf=0.3, iou=0.7, max_det=30,
                                              mask_protocol="official", chunk=7), device=device)
    dense, = predictor.everything(image, probs=True)
    coded, = predictor.everything(image, rle=True)
    expected_input = ref_letterbox(image, imgsz, auto=True)
    assert torch.equal(net.inputs[0][0].permute(1, 2, 0).cpu(), as_input(expected_input))
    raw, proto = net.outputs[0]
    frame = expected_input.shape[:2]
    (mh, mw), (h0, w0) = proto.shape[2:], hw
    gain = min(mh / h0, mw / w0)
    pads = ((mh - h0 * gain) / 2, (mw - w0 * gain) / 2)
    assert any(p % 1 for p in pads) == fractional  # the case the parameters claim
    assert prototype_crop((mh, mw), hw) == (slice(int(pads[0]), int(mh - pads[0])),
                                            slice(int(pads[1]), int(mw - pads[1])))
    boxes, scores, probs = reference(raw[0], proto[0], frame, hw, 0.3, 0.7, 30)
    assert len(dense) == len(boxes) > 5
    assert torch.equal(dense.boxes.cpu(), boxes) and torch.equal(dense.scores.cpu(), scores)
    assert torch.equal(dense.probs.cpu(), probs)
    assert torch.equal(dense.masks.cpu(), probs > 0.5)
    assert torch.equal(decode_rle(coded.rles, hw), probs > 0.5)
    assert torch.equal(dense.areas, (probs > 0.5).flatten(1).sum(1))
    # the near-frame box became the frame: the whole image (up to the float32 gain)
    whole = torch.tensor([0.0, 0.0, hw[1], hw[0]])
    assert ((boxes - whole).abs().amax(1) < 1e-3).any()


def test_official_batches_of_mixed_shapes_are_letterboxed_square():
    """8.0.120 letterboxes a batch of different shapes to imgsz x imgsz (auto=False)."""
    images = [gradient(150, 225), gradient(150, 200)]
    net = RandomHead()
    predictor = Predictor(net, PredictOptions(imgsz=128, conf=0.3, iou=0.7, max_det=30,
                                              mask_protocol="official"))
    segs = predictor.everything(images)
    assert net.inputs[0].shape[2:] == (128, 128)
    raw, proto = net.outputs[0]
    for i, (image, seg) in enumerate(zip(images, segs, strict=True)):
        expected = ref_letterbox(image, 128, auto=False)
        assert torch.equal(net.inputs[0][i].permute(1, 2, 0), as_input(expected))
        boxes, _, probs = reference(raw[i], proto[i], (128, 128), image.shape[:2], 0.3, 0.7, 30)
        assert torch.equal(seg.boxes, boxes) and torch.equal(seg.masks, probs > 0.5)
    exact = predictor.with_options(mask_protocol="exact")
    exact.everything(images)
    assert net.inputs[1].shape[2:] == (96, 128)  # exact: the smallest stride multiple
    predictor.with_options(imgsz=120).everything(images[:1])  # check_imgsz: up to 128
    assert torch.equal(net.inputs[2][0].permute(1, 2, 0), as_input(ref_letterbox(images[0], 128,
                                                                                 auto=True)))


def test_unknown_mask_protocol_names_the_allowed_values():
    with pytest.raises(ValueError, match="mask_protocol must be one of official, exact; got 'x'"):
        PredictOptions(mask_protocol="x")


def test_an_official_pool_is_the_prefix_of_a_lower_threshold_run():
    """eval/instance.py cuts the conf 0.4 / 300 pool out of the conf 0.001 / 1000 run: greedy
    NMS keeps the same boxes above a threshold, and their masks do not depend on the rest."""
    image = gradient(150, 225)
    net = RandomHead(n=120, seed=3)
    wide = Predictor(net, PredictOptions(imgsz=128, conf=0.001, iou=0.7, max_det=1000,
                                         mask_protocol="official"))
    narrow = wide.with_options(conf=0.5, max_det=25)
    all_, = wide.everything(image, probs=True)
    top, = narrow.everything(image, probs=True)
    k = int(min((all_.scores > 0.5).sum(), 25))
    assert 12 <= k == len(top) < len(all_)
    assert torch.equal(all_.boxes[:k], top.boxes) and torch.equal(all_.masks[:k], top.masks)
    assert torch.equal(all_.probs[:k], top.probs)


def test_disagreement_far_from_boundaries_counts_only_real_differences():
    from data_tools.bench.compare_protocols import far_from_boundaries

    a = np.zeros((60, 60), bool)
    a[10:40, 10:40] = True
    shifted = np.roll(a, 1, axis=1)  # a boundary one pixel off: 30 + 30 differing pixels
    assert (a ^ shifted).sum() == 60 and far_from_boundaries(a, shifted, 2.0) == 0
    holed = a.copy()
    holed[20:30, 20:30] = False  # a 10 x 10 hole: its rim is a boundary of the second mask
    # the boundary band is the hole's outermost ring (and the ring outside it); its pixels
    # more than 2 px from that band are the central 4 x 4
    assert far_from_boundaries(a, holed, 2.0) == 4 * 4
