"""Network output -> per-image masks, boxes and scores in the original image (everything mode)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torchvision.ops import nms

from fastsam_train.infer.geometry import (
    Letterbox,
    boxes_to_original,
    lazy_zeros,
    masks_from_prototypes,
    snap_boxes_to_border,
)
from fastsam_train.infer.official import (
    check_protocol,
    frame_region,
    official_masks,
    scale_boxes,
)
from fastsam_train.masks import encode_masks

MAX_NMS = 30000  # candidates kept for NMS, highest scores first (ultralytics' max_nms)


@dataclass
class Segmentation:
    """One image's masks, best score first.

    ``boxes`` float (n, 4) xyxy and ``masks`` bool (n, h0, w0), both in original pixels;
    ``scores`` (n,); ``areas`` long (n,) mask pixel counts; ``probs`` float (n, h0, w0), sigmoid
    of coefficients x prototypes inside the box, 0 outside (only when asked for); ``rles`` COCO
    RLE dicts instead of ``masks`` when the predictor was asked for RLE (memory stays at one
    chunk of dense masks).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    image_hw: tuple[int, int]
    masks: torch.Tensor | None = None
    areas: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    rles: list[dict] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, index: torch.Tensor) -> Segmentation:
        """The masks at ``index`` (long (k,) or bool (n,)), in that order."""
        index = index.nonzero().flatten() if index.dtype == torch.bool else index
        pick = index.tolist()
        return Segmentation(
            self.boxes[index], self.scores[index], self.image_hw,
            masks=None if self.masks is None else self.masks[index],
            areas=None if self.areas is None else self.areas[index],
            probs=None if self.probs is None else self.probs[index],
            rles=None if self.rles is None else [self.rles[i] for i in pick],
            extra=dict(self.extra))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (process-wide), then restore the old count.

    Post-processing is thousands of small per-mask operations; their thread hand-offs cost more
    than they save, badly so on a busy machine (measured on 2 shared cores: a comparison over 0.7M
    values took 1.3 ns/value on one thread and 17 ns/value on two)."""
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


def decode_detections(raw: torch.Tensor, conf: float, iou: float, max_det: int, nm: int = 32
                      ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Class-agnostic NMS of the network's raw output.

    raw: (B, 4 + nc + nm, A): xywh in network pixels, nc sigmoid class scores (the best is the
    score), nm mask coefficients. Returns per image ``(boxes (n, 4) xyxy, scores (n,),
    coefficients (n, nm))``, n <= max_det, by descending score. ``nm``: the number of mask
    prototypes (``proto.shape[1]``).
    """
    out = []
    for pred in raw.float().transpose(1, 2):  # (A, 4 + nc + nm)
        scores = pred[:, 4:-nm].amax(1)
        keep = scores > conf
        pred, scores = pred[keep], scores[keep]
        if len(scores) > MAX_NMS:
            top = scores.topk(MAX_NMS).indices
            pred, scores = pred[top], scores[top]
        xy, wh = pred[:, :2], pred[:, 2:4] / 2
        boxes = torch.cat([xy - wh, xy + wh], 1)
        kept = nms(boxes, scores, iou)[:max_det]
        out.append((boxes[kept], scores[kept], pred[kept, -nm:]))
    return out


def segment_image(raw_det: tuple[torch.Tensor, torch.Tensor, torch.Tensor], proto: torch.Tensor,
                  lb: Letterbox, snap_border: float, full_iou: float,
                  probs: bool = False, rle: bool = False, chunk: int = 64,
                  workers: int = 1, protocol: str = "exact") -> Segmentation:
    """One image's detections (network frame) and prototypes (32, hp, wp) -> ``Segmentation``.

    Boxes are snapped to the border first (``snap_border`` px in the network frame, 0 turns it
    off) so the masks are cropped by the snapped boxes, as in the official predictor.
    ``protocol``: ``exact`` snaps to the image's own area, maps boxes back exactly and samples
    each pixel at its true position (``workers`` threads assemble masks,
    ``masks_from_prototypes``); ``official`` is FastSAM on ultralytics 8.0.120 bit for bit
    (``official.py``: snap to the frame, ``scale_boxes``, ``process_mask_native``).
    """
    official = check_protocol(protocol) == "official"
    boxes, scores, coefficients = raw_det
    if snap_border > 0 and len(boxes):
        region = frame_region(lb) if official else lb.content_box
        boxes = snap_boxes_to_border(boxes, region, threshold=snap_border, full_iou=full_iou)
    boxes = scale_boxes(boxes, lb) if official else boxes_to_original(boxes, lb)
    n, (h0, w0) = len(boxes), lb.orig_hw
    seg = Segmentation(boxes, scores, (h0, w0), rles=[] if rle else None,
                       extra={"mask_protocol": protocol})
    if not rle:
        seg.masks = lazy_zeros((n, h0, w0), torch.bool, proto.device)
    if probs:
        seg.probs = lazy_zeros((n, h0, w0), torch.float32, proto.device)
    if official:
        parts = official_masks(coefficients, proto, boxes, (h0, w0), chunk, probs, seg.masks,
                               seg.probs)
    else:
        parts = masks_from_prototypes(coefficients, proto, boxes, lb, chunk, probs, seg.masks,
                                      seg.probs, workers)
    areas = []
    # official: one matmul and F.interpolate per chunk, run on ``workers`` torch threads
    with torch_threads(workers) if official else contextlib.nullcontext():
        for _, masks, _, area in parts:
            areas.append(area)
            if rle:
                seg.rles.extend(encode_masks(masks))
    seg.areas = torch.cat(areas) if areas else torch.zeros(0, dtype=torch.long)
    return seg
