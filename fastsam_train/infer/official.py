"""The ``official`` mask protocol: masks exactly as FastSAM's code on ultralytics 8.0.120 made
them (the protocol behind the paper's numbers). ``exact`` (``geometry.masks_from_prototypes``)
samples every pixel at its true position instead; the two differ where the letterbox padding is
not a whole number of prototype cells (e.g. a 1500 x 2250 image at 1024, but not 1500 x 2000).

8.0.120's steps, written from their definitions (``ultralytics/yolo/data/augment.py``
``LetterBox``, ``yolo/utils/ops.py`` ``scale_boxes`` / ``process_mask_native`` / ``crop_mask``,
FastSAM's ``fastsam/predict.py`` + ``utils.py``):

* letterbox: ``geometry.letterbox_batch`` already is 8.0.120's ``LetterBox`` (long side to imgsz,
  ``round`` of the short side, padding split ``round(d/2 - 0.1)`` / ``round(d/2 + 0.1)``); the
  frame is the stride multiple for a batch of equal shapes and imgsz x imgsz otherwise
  (``letterbox_square``); imgsz itself is first rounded up to a stride multiple
  (``check_imgsz``, ``official_imgsz``);
* border snap in the network frame: box sides within 20 px of the *frame* border move onto it,
  boxes with IoU > 0.9 with the whole frame become the frame (FastSAM did it for the first image
  of a batch; here for every image, i.e. what a batch of one gives);
* ``scale_boxes``: gain = min(H / h0, W / w0) (unrounded), pad = round((W - w0 gain) / 2 - 0.1)
  (from the unrounded resized size, so it can differ from the letterbox's own offset by one),
  boxes = (boxes - pad) / gain, clipped;
* ``process_mask_native``: sigmoid(coefficients @ prototypes) of all masks at once, prototype
  rows / columns [int(pad), int(size - pad)) kept (pad = the same unrounded padding in prototype
  cells), bilinear upsampling of the *probabilities* to the image (``align_corners=False``),
  crop to the box (pixel i with x1 <= i < x2), ``> 0.5``.

Every arithmetic step is the same torch operation 8.0.120 runs (on CPU and GPU alike); the
product of all masks is one matmul, as there (BLAS may round a different row count
differently), and the upsampling is ``F.interpolate`` itself: all masks as the channels of one
call, as 8.0.120 does, when they fit in ``budget`` pixels, else a batch of one-channel maps per
call (the same values: torch's CPU kernel takes a different path only for exactly 3 channels,
measured in the tests, and 3 masks always go in one call).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fastsam_train.infer.geometry import Letterbox, box_slices, chunks, lazy_zeros

MASK_PROTOCOLS = ("official", "exact")
UPSAMPLE_BUDGET = 1 << 25  # float pixels upsampled at once (128 MB): sets masks per interpolate


def check_protocol(name: str) -> str:
    """``name`` if it is a mask protocol, else ValueError listing the allowed values."""
    if name not in MASK_PROTOCOLS:
        raise ValueError(f"mask_protocol must be one of {', '.join(MASK_PROTOCOLS)}; "
                         f"got {name!r}")
    return name


def official_imgsz(imgsz: int, stride: int = 32) -> int:
    """8.0.120's ``check_imgsz``: the input size rounded up to a multiple of the stride."""
    return math.ceil(imgsz / stride) * stride


def letterbox_square(shapes: list[tuple[int, ...]], square: bool) -> bool:
    """Whether 8.0.120 letterboxes this batch to imgsz x imgsz: when asked (``square``, e.g. a
    fixed-shape exported model) or when the images' shapes differ (``LetterBox(auto=False)``);
    a batch of equal shapes gets the smallest stride multiple."""
    return square or len(set(shapes)) > 1


def frame_region(lb: Letterbox) -> tuple[float, float, float, float]:
    """The whole network frame, xyxy: what the official border snap compares boxes with."""
    return 0.0, 0.0, float(lb.input_hw[1]), float(lb.input_hw[0])


def scale_boxes(boxes: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """8.0.120 ``scale_boxes``: (n, 4) xyxy network pixels -> original pixels, clipped; a new
    tensor (the same in-place float32 operations on a copy)."""
    (hn, wn), (h0, w0) = lb.input_hw, lb.orig_hw
    gain = min(hn / h0, wn / w0)
    pad_x = round((wn - w0 * gain) / 2 - 0.1)
    pad_y = round((hn - h0 * gain) / 2 - 0.1)
    out = boxes.clone()
    out[..., [0, 2]] -= pad_x
    out[..., [1, 3]] -= pad_y
    out[..., :4] /= gain
    out[..., 0].clamp_(0, w0)
    out[..., 1].clamp_(0, h0)
    out[..., 2].clamp_(0, w0)
    out[..., 3].clamp_(0, h0)
    return out


def prototype_crop(proto_hw: tuple[int, int], orig_hw: tuple[int, int]) -> tuple[slice, slice]:
    """The prototype rows and columns ``process_mask_native`` keeps: [int(pad), int(size - pad))
    with pad = (size - orig x gain) / 2, gain = min(hp / h0, wp / w0)."""
    (mh, mw), (h0, w0) = proto_hw, orig_hw
    gain = min(mh / h0, mw / w0)
    pad_w, pad_h = (mw - w0 * gain) / 2, (mh - h0 * gain) / 2
    return slice(int(pad_h), int(mh - pad_h)), slice(int(pad_w), int(mw - pad_w))


def official_masks(coefficients: torch.Tensor, protos: torch.Tensor, boxes: torch.Tensor,
                   orig_hw: tuple[int, int], chunk: int = 64, probs: bool = False,
                   masks_out: torch.Tensor | None = None,
                   probs_out: torch.Tensor | None = None, budget: int = UPSAMPLE_BUDGET,
                   ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """``process_mask_native`` + ``crop_mask``, ``chunk`` masks at a time.

    coefficients (n, nm), protos (nm, hp, wp), boxes (n, 4) xyxy original pixels (from
    ``scale_boxes``). Yields ``(sl, masks, prob, areas)`` as ``masks_from_prototypes``: bool
    (c, h0, w0) masks, float (c, h0, w0) upsampled probabilities inside the box and 0 outside
    (if ``probs``), long (c,) areas; views of ``masks_out`` / ``probs_out`` when given.
    """
    h0, w0 = orig_hw
    nm, mh, mw = protos.shape
    n = len(coefficients)
    grid = (coefficients.float() @ protos.float().contiguous().view(nm, -1)).sigmoid()
    rows, cols = prototype_crop((mh, mw), orig_hw)
    grid = grid.view(-1, mh, mw)[:, rows, cols]
    regions = box_slices(boxes, orig_hw)
    whole = n <= 3 or n * h0 * w0 <= budget
    every = upsample(grid, orig_hw) if whole and n else None
    per_call = n if whole else max(1, budget // max(h0 * w0, 1))
    for sl in chunks(n, chunk):
        shape = (sl.stop - sl.start, h0, w0)
        masks = masks_out[sl] if masks_out is not None else \
            lazy_zeros(shape, torch.bool, protos.device)
        prob = None if not probs else probs_out[sl] if probs_out is not None else \
            lazy_zeros(shape, torch.float32, protos.device)
        areas = torch.zeros(shape[0], dtype=torch.long)
        for part in chunks(shape[0], per_call):
            first, last = sl.start + part.start, sl.start + part.stop
            up = every[first:last] if every is not None else \
                upsample(grid[first:last], orig_hw, channels=False)
            for j in range(last - first):
                k = part.start + j
                r, c = regions[first + j]
                if r.stop <= r.start or c.stop <= c.start:
                    continue
                inside = torch.gt(up[j, r, c], 0.5, out=masks[k, r, c])
                if prob is not None:
                    prob[k, r, c] = up[j, r, c]
                areas[k] = int(torch.count_nonzero(inside))
        yield sl, masks, prob, areas


def upsample(grid: torch.Tensor, hw: tuple[int, int], channels: bool = True) -> torch.Tensor:
    """Bilinear (``align_corners=False``) (c, h, w) -> (c, *hw): the maps as the channels of one
    image (``process_mask_native``'s call) or as a batch of one-channel images."""
    if channels:
        return F.interpolate(grid[None], hw, mode="bilinear", align_corners=False)[0]
    return F.interpolate(grid[:, None], hw, mode="bilinear", align_corners=False)[:, 0]
