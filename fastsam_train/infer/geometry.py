"""Letterboxing, the exact way back to the original image, and masks from prototypes.

Frames: the *original* image (h0, w0); the *network* input (H, W), holding the image resized to
(nh, nw) at offset (left, top) inside grey padding; the *prototype* grid (H/s, W/s), s = 4 for
YOLOv8-seg. Pixel centres are at integer + 0.5 in every frame, so original pixel j sits at network
x = left + (j + 0.5) * nw / w0 and at prototype index x / s - 0.5. Masks are sampled from the
prototype grid at exactly those points (bilinear, edges clamped: torch's ``align_corners=False``
convention), so they line up with the original image whatever the padding or rounding was.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from fastsam_train.infer.memory import POOL

PAD_VALUE = 114  # ultralytics' letterbox grey
GRID_GROUP = 16  # masks per full-grid logits product on the CPU (full_grid_logits)


@dataclass(frozen=True)
class Letterbox:
    """Where one image sits in the network input: original (h0, w0), resized (nh, nw), and the
    top-left corner (left, top) of the resized image in the (H, W) network frame."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_xy: tuple[int, int]
    input_hw: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Network pixels per original pixel along x and y (they differ by rounding only)."""
        return self.resized_hw[1] / self.orig_hw[1], self.resized_hw[0] / self.orig_hw[0]

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """The image's own area in the network frame, xyxy."""
        (nh, nw), (left, top) = self.resized_hw, self.offset_xy
        return left, top, left + nw, top + nh


def resized_hw(orig_hw: tuple[int, int], imgsz: int) -> tuple[int, int]:
    """(nh, nw): the long side scaled to ``imgsz`` (up or down), the short side rounded."""
    h0, w0 = orig_hw
    r = imgsz / max(h0, w0)
    return min(max(round(h0 * r), 1), imgsz), min(max(round(w0 * r), 1), imgsz)


def letterbox_batch(images: list[np.ndarray], imgsz: int, stride: int = 32,
                    square: bool = False) -> tuple[torch.Tensor, list[Letterbox]]:
    """RGB uint8 images (h0_i, w0_i, 3) -> uint8 (B, 3, H, W) and each image's ``Letterbox``.

    Each image is resized (bilinear) so its long side is ``imgsz`` and centred on grey. The frame
    is (imgsz, imgsz) if ``square`` (fixed-shape ONNX models need it), else the smallest multiple
    of ``stride`` holding every image of the batch (as ultralytics' predictor: less padding).
    """
    sizes = [resized_hw(im.shape[:2], imgsz) for im in images]
    if square:
        frame = (imgsz, imgsz)
    else:
        frame = tuple(math.ceil(max(s[k] for s in sizes) / stride) * stride for k in (0, 1))
    batch = np.full((len(images), frame[0], frame[1], 3), PAD_VALUE, np.uint8)
    boxes = []
    for i, (image, (nh, nw)) in enumerate(zip(images, sizes, strict=True)):
        top, left = (frame[0] - nh) // 2, (frame[1] - nw) // 2
        resized = image if image.shape[:2] == (nh, nw) else cv2.resize(
            image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        batch[i, top:top + nh, left:left + nw] = resized
        boxes.append(Letterbox(image.shape[:2], (nh, nw), (left, top), frame))
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(), boxes


def boxes_to_original(boxes: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """(n, 4) xyxy network pixels -> (n, 4) xyxy original pixels, clipped to the image."""
    sx, sy = lb.scale_xy
    left, top = lb.offset_xy
    out = (boxes - boxes.new_tensor([left, top, left, top])) / boxes.new_tensor([sx, sy, sx, sy])
    h0, w0 = lb.orig_hw
    return torch.stack([out[:, 0].clamp(0, w0), out[:, 1].clamp(0, h0), out[:, 2].clamp(0, w0),
                        out[:, 3].clamp(0, h0)], 1)


def boxes_to_network(boxes: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """(n, 4) xyxy original pixels -> (n, 4) xyxy network pixels (inverse of the above)."""
    sx, sy = lb.scale_xy
    left, top = lb.offset_xy
    return boxes * boxes.new_tensor([sx, sy, sx, sy]) + boxes.new_tensor([left, top, left, top])


def snap_boxes_to_border(boxes: torch.Tensor, region: tuple[float, float, float, float],
                         *, threshold: float, full_iou: float) -> torch.Tensor:
    """FastSAM's border rule for one image: box sides closer than ``threshold`` to the border of
    ``region`` (the image, xyxy) move onto it, and boxes whose IoU with the whole image then
    exceeds ``full_iou`` become the whole image. (n, 4) xyxy -> new (n, 4); input untouched.

    The official predictor did this in place in the padded network frame and for the first image
    of a batch only; here it is per image, against the image's own area.
    """
    x0, y0, x1, y1 = region
    out = boxes.clone()
    out[:, 0] = torch.where(out[:, 0] < x0 + threshold, out.new_tensor(x0), out[:, 0])
    out[:, 1] = torch.where(out[:, 1] < y0 + threshold, out.new_tensor(y0), out[:, 1])
    out[:, 2] = torch.where(out[:, 2] > x1 - threshold, out.new_tensor(x1), out[:, 2])
    out[:, 3] = torch.where(out[:, 3] > y1 - threshold, out.new_tensor(y1), out[:, 3])
    full = out.new_tensor([x0, y0, x1, y1])
    inter = ((out[:, 2].clamp(max=x1) - out[:, 0].clamp(min=x0)).clamp(min=0)
             * (out[:, 3].clamp(max=y1) - out[:, 1].clamp(min=y0)).clamp(min=0))
    union = (x1 - x0) * (y1 - y0) + (out[:, 2] - out[:, 0]) * (out[:, 3] - out[:, 1]) - inter
    out[inter / union.clamp(min=1e-9) > full_iou] = full
    return out


@dataclass(frozen=True)
class AxisSampler:
    """Bilinear taps along one axis: original pixel j reads prototype cells ``lo[j]``, ``hi[j]``
    with weight ``frac[j]`` on ``hi``. Build with ``axis_sampler``."""

    lo: torch.Tensor
    hi: torch.Tensor
    frac: torch.Tensor


def axis_sampler(n_orig: int, n_proto: int, offset: int, scale: float, stride: float,
                 device: torch.device | str = "cpu") -> AxisSampler:
    """Taps for ``n_orig`` original pixels on a ``n_proto``-cell prototype axis: original pixel j
    is at network coordinate offset + (j + 0.5) * scale, i.e. prototype index that / stride - 0.5
    (clamped to the grid). Returns (n_orig,) long ``lo``, ``hi`` and float ``frac``."""
    j = torch.arange(n_orig, device=device, dtype=torch.float64)
    u = ((offset + (j + 0.5) * scale) / stride - 0.5).clamp(0, n_proto - 1)
    lo = u.floor().long().clamp(max=n_proto - 1)
    return AxisSampler(lo, (lo + 1).clamp(max=n_proto - 1), (u - lo).float())


def samplers_for(lb: Letterbox, proto_hw: tuple[int, int],
                 device: torch.device | str = "cpu") -> tuple[AxisSampler, AxisSampler]:
    """(rows, cols) samplers mapping the original image of ``lb`` onto a prototype grid."""
    (h0, w0), (hp, wp) = lb.orig_hw, proto_hw
    sx, sy = lb.scale_xy
    left, top = lb.offset_xy
    stride_y, stride_x = lb.input_hw[0] / hp, lb.input_hw[1] / wp
    return (axis_sampler(h0, hp, top, sy, stride_y, device),
            axis_sampler(w0, wp, left, sx, stride_x, device))


def tap_window(rows: AxisSampler, cols: AxisSampler, r: slice, c: slice) -> tuple[slice, slice]:
    """The prototype rows and columns that the bilinear taps of the (non-empty) pixel region
    [r, c] read (taps are monotonic). Samplers of torch tensors or numpy arrays."""
    return (slice(int(rows.lo[r.start]), int(rows.hi[r.stop - 1]) + 1),
            slice(int(cols.lo[c.start]), int(cols.hi[c.stop - 1]) + 1))


def sample_region(logits: torch.Tensor, rows: AxisSampler, cols: AxisSampler,
                  r: slice, c: slice, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Bilinear values of a prototype-grid map at original pixels [r, c]: (hp, wp) ->
    (len(r), len(c)). ``logits`` may also be a window of the map whose top-left cell is
    ``origin`` and that covers ``tap_window``. Columns are interpolated first, on the 4x smaller
    prototype rows that the region reads, then rows, with contiguous ``index_select`` gathers
    and ``lerp``."""
    r0, c0 = origin
    lo_r, hi_r = rows.lo[r] - r0, rows.hi[r] - r0
    first, last = int(lo_r[0]), int(hi_r[-1]) + 1
    window = logits[first:last]
    lines = torch.lerp(window.index_select(1, cols.lo[c] - c0),
                       window.index_select(1, cols.hi[c] - c0), cols.frac[c])
    return torch.lerp(lines.index_select(0, lo_r - first), lines.index_select(0, hi_r - first),
                      rows.frac[r].unsqueeze(1))


def compiled_threshold(window: torch.Tensor, samplers: tuple[AxisSampler, AxisSampler],
                       r: slice, c: slice, origin: tuple[int, int], out: torch.Tensor) -> int:
    """``sample_region(window, ..., origin) > 0`` written into ``out[r, c]`` (bool (H, W), CPU)
    by the numba kernel (``kernels.threshold_bilinear``: identical result, one pass, ~3x
    faster); returns its area. ``samplers``: ``numpy_samplers(rows, cols)``."""
    from fastsam_train.infer.kernels import threshold_bilinear

    rows, cols = samplers
    return int(threshold_bilinear(window.contiguous().numpy(), origin[0], origin[1], rows.lo,
                                  rows.hi, rows.frac, cols.lo, cols.hi, cols.frac,
                                  np.array([r.start, r.stop]), np.array([c.start, c.stop]),
                                  out.numpy()))


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def full_grid_logits(coeff: torch.Tensor, protos: torch.Tensor, index: list[int],
                     pool: ThreadPoolExecutor | None = None) -> dict[int, torch.Tensor]:
    """{k: coeff[k] @ protos} (hp, wp) for k in ``index``. On a GPU one product. On the CPU the
    products are numpy's, ``GRID_GROUP`` masks each (fixed groups: the same values whatever the
    thread count), spread over ``pool``'s threads with one BLAS thread each. For this shape
    (K = 32) numpy's (OpenBLAS) product is several times faster than torch's (64 masks on a
    192x256 grid: 3-7 ms against 15 ms), and a multi-threaded BLAS call would leave its threads
    spinning beside the mask threads (measured: twice the CPU time for the same work)."""
    if protos.device.type != "cpu":
        logits = coeff[index] @ protos.flatten(1)
        return dict(zip(index, logits.view(-1, *protos.shape[1:]), strict=True))
    flat = protos.flatten(1).numpy()
    parts = [index[i:i + GRID_GROUP] for i in range(0, len(index), GRID_GROUP)]
    with _blas().limit(limits=1, user_api="blas"):
        products = (pool.map if pool else map)(lambda part: coeff[part].numpy() @ flat, parts)
        out = {}
        for part, logits in zip(parts, products, strict=True):
            out.update(zip(part, torch.from_numpy(logits).view(-1, *protos.shape[1:]),
                           strict=True))
    return out


def cpu_window_logits(coeff: np.ndarray, protos: np.ndarray,
                      samplers: tuple[AxisSampler, AxisSampler], r: slice, c: slice
                      ) -> tuple[torch.Tensor, tuple[int, int]]:
    """(logits on the prototype cells that region [r, c] reads, their top-left cell): float32
    (nm,) coefficients . (hp, wp, nm) prototypes, numpy, compiled (``kernels.window_logits``)."""
    from fastsam_train.infer.kernels import window_logits

    wr, wc = tap_window(*samplers, r, c)
    return (torch.from_numpy(window_logits(coeff, protos, wr.start, wr.stop, wc.start, wc.stop)),
            (wr.start, wc.start))


def numpy_samplers(rows: AxisSampler, cols: AxisSampler) -> tuple[AxisSampler, AxisSampler]:
    """The (rows, cols) samplers with numpy arrays, for the compiled CPU kernels."""
    return tuple(AxisSampler(*(t.cpu().numpy() for t in (s.lo, s.hi, s.frac)))
                 for s in (rows, cols))


def box_slices(boxes: torch.Tensor, hw: tuple[int, int]) -> list[tuple[slice, slice]]:
    """(n, 4) xyxy -> per box the (row, col) pixel slices whose index i satisfies
    y1 <= i < y2 and x1 <= j < x2 (ultralytics' ``crop_mask`` rule), clipped to the image."""
    h, w = hw
    lim = boxes.new_tensor([w, h, w, h])
    edges = torch.minimum(boxes.ceil().clamp(min=0), lim).long().tolist()
    return [(slice(y1, max(y1, y2)), slice(x1, max(x1, x2))) for x1, y1, x2, y2 in edges]


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(start + size, n))


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero tensor. On the CPU a large one comes from ``memory.POOL``: memory of a released
    stack, cleared, or a fresh anonymous mapping of small pages, which the OS zeroes only where
    something is written (a (300, 768, 1024) bool stack whose boxes cover a tenth of the image
    costs about a tenth of its size to create). numpy's own ``calloc`` asks for huge pages: a
    2 MiB page is zeroed whole on its first write, and on a fragmented machine the kernel
    compacts memory to find one (measured in the benchmark, FastSAM-s rows: system time 1.39 ->
    0.58-0.67 s with small pages)."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(POOL.zeros(shape, torch.empty((), dtype=dtype).numpy().dtype))


def masks_from_prototypes(coefficients: torch.Tensor, protos: torch.Tensor, boxes: torch.Tensor,
                          lb: Letterbox, chunk: int = 64, probs: bool = False,
                          masks_out: torch.Tensor | None = None,
                          probs_out: torch.Tensor | None = None, workers: int = 1,
                          ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None,
                                              torch.Tensor]]:
    """Masks at the original resolution, ``chunk`` detections at a time.

    coefficients (n, 32) and protos (32, hp, wp) from the network; boxes (n, 4) xyxy in original
    pixels. Yields ``(sl, masks, prob, areas)`` per chunk: ``masks`` bool (c, h0, w0) = logit > 0
    inside the box (sigmoid > 0.5), ``prob`` float (c, h0, w0) sigmoid inside the box and 0
    outside (only if ``probs``), ``areas`` long (c,) mask pixel counts. Chunks are views of
    ``masks_out`` / ``probs_out`` (n, h0, w0) when given, else fresh buffers. Only each box is
    sampled, so the cost follows the boxes' area, and nothing goes through OpenCV (whose resize
    stops at 512 channels). ``workers`` threads assemble the masks of a chunk in parallel (each
    mask is one compiled pass, or a few large tensor ops, that release the GIL; CPU only).
    """
    h0, w0 = lb.orig_hw
    rows, cols = samplers_for(lb, protos.shape[1:], protos.device)
    protos = protos.float()
    # Both layouts, each made once and only if needed: (nm, hp, wp) for full-grid products,
    # (hp, wp, nm) for the compiled window kernel (free when the network ran channels-last).
    planar = functools.cache(lambda: protos.contiguous())
    channels_last = functools.cache(lambda: protos.permute(1, 2, 0).contiguous().numpy())
    regions = box_slices(boxes, lb.orig_hw)
    on_cpu = protos.device.type == "cpu"
    big_box = h0 * w0 // 4  # pixels: a box this large takes its logits from a full-grid matmul
    parallel = workers > 1 and on_cpu
    flat_samplers = numpy_samplers(rows, cols) if on_cpu else None
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_mode(fn, *args):  # autograd modes are thread-local: pool threads take the caller's
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args)

    def fill(k: int, r: slice, c: slice, coeff: torch.Tensor, coeff_np: np.ndarray | None,
             logits: dict[int, torch.Tensor], masks: torch.Tensor,
             prob: torch.Tensor | None) -> int:
        """Mask ``k`` of a chunk (and its probabilities) inside box [r, c]; returns its area."""
        if r.stop <= r.start or c.stop <= c.start:
            return 0
        if k in logits:
            window, origin = logits[k], (0, 0)
        elif on_cpu:
            window, origin = cpu_window_logits(coeff_np[k], channels_last(), flat_samplers,
                                               r, c)
        else:
            wr, wc = tap_window(rows, cols, r, c)
            window = torch.tensordot(coeff[k], protos[:, wr, wc], dims=1)
            origin = (wr.start, wc.start)
        if prob is None and on_cpu:  # masks only: the compiled single pass
            return compiled_threshold(window, flat_samplers, r, c, origin, masks[k])
        values = sample_region(window, rows, cols, r, c, origin)
        inside = torch.gt(values, 0, out=masks[k, r, c])
        if prob is not None:
            torch.sigmoid(values, out=prob[k, r, c])
        return int(torch.count_nonzero(inside))

    pool = ThreadPoolExecutor(workers) if parallel else None
    try:
        for sl in chunks(len(coefficients), chunk):
            coeff, boxes_sl = coefficients[sl].float(), regions[sl]
            # One matmul over the whole grid for the chunk's large boxes (all of them on a GPU);
            # on the CPU a small box's logits are computed only on the cells its taps read
            # (SA-1B-like boxes: ~30x fewer FLOPs). Same values either way.
            large = [k for k, (r, c) in enumerate(boxes_sl)
                     if not on_cpu or (r.stop - r.start) * (c.stop - c.start) > big_box]
            logits = full_grid_logits(coeff, planar(), large, pool) if large else {}
            coeff_np = coeff.numpy() if on_cpu else None
            shape = (len(coeff), h0, w0)
            masks = masks_out[sl] if masks_out is not None else \
                lazy_zeros(shape, torch.bool, protos.device)
            prob = None if not probs else probs_out[sl] if probs_out is not None else \
                lazy_zeros(shape, torch.float32, protos.device)

            jobs = [(k, r, c, coeff, coeff_np, logits, masks, prob)
                    for k, (r, c) in enumerate(boxes_sl)]
            counts = pool.map(lambda job: in_mode(fill, *job), jobs) if pool else \
                [fill(*job) for job in jobs]
            yield sl, masks, prob, torch.tensor(list(counts), dtype=torch.long)
    finally:
        if pool:
            pool.shutdown()
