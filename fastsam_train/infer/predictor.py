"""The FastSAM predictor: everything mode on batches of images, then point / box / text prompts.

    predictor = Predictor.from_weights("FastSAM-x.pt", allow_pickle=True)   # or a .ckpt
    seg = predictor.everything(["dog.jpg"])[0]          # all masks of the image
    dog = predictor.points(seg, [[420, 300]], [1])      # the mask under a point
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from fastsam_train import images
from fastsam_train.images import ImageReadError
from fastsam_train.infer import prompts as P
from fastsam_train.infer.geometry import letterbox_batch
from fastsam_train.infer.official import check_protocol, letterbox_square, official_imgsz
from fastsam_train.infer.postprocess import (
    Segmentation,
    decode_detections,
    segment_image,
    torch_threads,
)
from fastsam_train.infer.weights import build_network, read_weights
from fastsam_train.masks import decode_rle

Network = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ImageLike = str | Path | np.ndarray


def predict_yaml() -> dict:
    """``conf/predict.yaml``, shipped as package data (``fastsam_train/conf/predict.yaml``
    links to it): the one home of the everything-mode defaults and the prompt defaults."""
    return yaml.safe_load((resources.files("fastsam_train") / "conf" / "predict.yaml")
                          .read_text())


_DEFAULTS = predict_yaml()


@dataclass(frozen=True)
class PredictOptions:
    """Everything-mode settings; defaults read from ``conf/predict.yaml`` (the official FastSAM
    ``Inference.py`` ones on ultralytics 8.0.120, except ``mask_protocol``; the file says why
    each value is what it is). ``fastsam predict`` reads the same file."""

    imgsz: int = _DEFAULTS["imgsz"]  # long side of the network input
    conf: float = _DEFAULTS["conf"]  # score threshold; evaluation wants ~0.001, max_det 1000
    iou: float = _DEFAULTS["iou"]  # NMS IoU
    max_det: int = _DEFAULTS["max_det"]  # masks kept per image
    snap_border: float = _DEFAULTS["snap_border"]  # px (network frame): box sides snap to it
    full_iou: float = _DEFAULTS["full_iou"]  # snapped boxes this close to the image become it
    square: bool = _DEFAULTS["square"]  # letterbox to imgsz x imgsz or to a stride multiple
    chunk: int = _DEFAULTS["chunk"]  # masks assembled at once (peak memory)
    post_workers: int = _DEFAULTS["post_workers"]  # mask-assembly threads (0: torch's count)
    max_pixels: int = _DEFAULTS["max_pixels"]  # larger images are refused before decoding
    mask_protocol: str = _DEFAULTS["mask_protocol"]  # exact | official (8.0.120 bit for bit)

    def __post_init__(self) -> None:
        check_protocol(self.mask_protocol)

    def mask_threads(self) -> int:
        """The threads that assemble masks: ``post_workers``, or torch's thread count if 0."""
        return self.post_workers or torch.get_num_threads()


def read_image(image: ImageLike, max_pixels: int = PredictOptions.max_pixels) -> np.ndarray:
    """A path or an array -> RGB uint8 (H, W, 3). Arrays are taken as RGB (gray and RGBA are
    converted). Files go through ``fastsam_train.images`` (EXIF orientation applied, as
    ``cv2.imread`` does; corrupt data logged); images over ``max_pixels`` are refused
    (ImageReadError, before decoding for files)."""
    if isinstance(image, str | Path):
        return images.read_rgb(image, max_pixels)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ImageReadError("not_an_image", f"expected an RGB uint8 (H, W, 3) array, got "
                             f"{array.dtype} {array.shape}")
    images.check_pixels(*array.shape[:2], max_pixels, "image array")
    return np.ascontiguousarray(array[..., :3])


class Predictor:
    """Runs a FastSAM network (PyTorch module or ONNX Runtime session) with FastSAM's
    post-processing. ``network`` maps float (B, 3, H, W) RGB in [0, 1] to (raw, proto)."""

    def __init__(self, network: Network, options: PredictOptions | None = None,
                 device: str | torch.device = "cpu", half: bool = False) -> None:
        self.network, self.options = network, options or PredictOptions()
        self.device, self.half = torch.device(device), half
        self.timing: dict[str, float] = {}

    @classmethod
    def from_weights(cls, path: str | Path, allow_pickle: bool = False, device: str = "cpu",
                     half: bool = False, **options) -> Predictor:
        """Load a ``.ckpt`` (EMA weights), a weights-only file, or (with ``allow_pickle``) an
        ultralytics ``.pt``; ``options`` override ``PredictOptions`` fields."""
        net = build_network(read_weights(path, allow_pickle)).to(device)
        return cls(net.half() if half else net, PredictOptions(**options), device, half)

    @classmethod
    def from_onnx(cls, path: str | Path, providers: Sequence[str] | None = None,
                  **options) -> Predictor:
        """An ONNX Runtime predictor for a model from ``export_onnx``; it is fixed to the exported
        square input size, which sets ``imgsz``."""
        from fastsam_train.infer.onnx import OnnxNetwork

        net = OnnxNetwork(path, providers)
        return cls(net, PredictOptions(**{**options, "imgsz": net.imgsz, "square": True}))

    def with_options(self, **changes) -> Predictor:
        """The same network with some options changed."""
        return Predictor(self.network, replace(self.options, **changes), self.device, self.half)

    # --- everything mode ------------------------------------------------------------------------
    @torch.inference_mode()
    def everything(self, images: ImageLike | Sequence[ImageLike], probs: bool = False,
                   rle: bool = False) -> list[Segmentation]:
        """All masks of each image, in one network batch. ``probs`` adds the probability maps;
        ``rle`` returns COCO RLEs instead of dense masks. ``self.timing`` gets the seconds spent
        in preprocess / forward / postprocess."""
        batch = [images] if isinstance(images, str | Path | np.ndarray) else list(images)
        o, t0 = self.options, time.perf_counter()
        arrays = [read_image(im, o.max_pixels) for im in batch]
        square, imgsz = o.square, o.imgsz
        if o.mask_protocol == "official":  # 8.0.120: mixed shapes -> imgsz x imgsz
            square = letterbox_square([a.shape for a in arrays], o.square)
            imgsz = official_imgsz(o.imgsz)
        x, boxes = letterbox_batch(arrays, imgsz, square=square)
        x = x.to(self.device)
        x = x.half() / 255 if self.half else x.float() / 255
        t1 = time.perf_counter()
        raw, proto = self.network(x)
        t2 = time.perf_counter()
        workers = o.mask_threads()
        with torch_threads(1):  # small ops: one intra-op thread, parallel over masks instead
            dets = decode_detections(raw, o.conf, o.iou, o.max_det, proto.shape[1])
            out = [segment_image(det, proto[i].float(), lb, o.snap_border, o.full_iou, probs,
                                 rle, o.chunk, workers, o.mask_protocol)
                   for i, (det, lb) in enumerate(zip(dets, boxes, strict=True))]
        t3 = time.perf_counter()
        self.timing = {"preprocess": t1 - t0, "forward": t2 - t1, "postprocess": t3 - t2}
        return out

    # --- prompts --------------------------------------------------------------------------------
    @staticmethod
    def _dense(seg: Segmentation) -> torch.Tensor:
        return seg.masks if seg.masks is not None else decode_rle(seg.rles, seg.image_hw)

    def points(self, seg: Segmentation, points, labels=None, mode: str = "official",
               cleanup: bool = False) -> Segmentation:
        """Masks for point prompts: (p, 2) x, y pixels, labels (p,) 1 foreground / 0 background
        (default all 1). ``official``: one mask, the largest-to-smallest sweep of the FastSAM
        repo (``cleanup`` adds its morphological closing + opening). ``any``: ultralytics' rule,
        every mask covering a foreground point and no background point."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64).reshape(-1, 2))
        labs = torch.ones(len(pts), dtype=torch.long) if labels is None else \
            torch.as_tensor(np.asarray(labels)).long().flatten()
        P.check_points(pts, labs, seg.image_hw)
        masks, pts = self._dense(seg), pts.floor().long()
        if mode == "any":
            return _with_masks(seg, masks, P.select_points_any(P.point_hits(masks, pts), labs))
        if mode != "official":
            raise ValueError(f"point mode must be 'official' or 'any', got {mode!r}")
        merged = P.merge_points_official(masks, pts, labs, seg.areas)
        if cleanup:
            merged = P.morphological_cleanup(merged)
        used = P.point_hits(masks, pts)[:, labs == 1].any(1)
        score = seg.scores[used].max() if used.any() else seg.scores.new_zeros(())
        return Segmentation(P.masks_to_boxes(merged[None]), score.reshape(1), seg.image_hw,
                            masks=merged[None], areas=P.mask_areas(merged[None]),
                            extra={"mode": "official"})

    def boxes(self, seg: Segmentation, boxes) -> Segmentation:
        """For each prompt box (b, 4) xyxy, the mask with the highest IoU with the filled box
        (b masks, in prompt order; two boxes may pick the same mask)."""
        bx = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        P.check_boxes(bx, seg.image_hw)
        bx = bx.float()
        masks = self._dense(seg)
        if len(masks) == 0:
            return seg.subset(torch.zeros(0, dtype=torch.long))
        return _with_masks(seg, masks, P.select_boxes(masks, bx, seg.areas))

    def text(self, seg: Segmentation, image: ImageLike, texts: str | Sequence[str], clip,
             mode: str = "softmax", min_area: int = 100, crop: str = "official") -> Segmentation:
        """For each text, the mask whose crop CLIP finds closest (``clip`` from
        ``text.load_clip``; ``crop``: ``official`` (the mask's box region of the image on white,
        CLIP's preprocessing) or ``masked``, see ``text.py``); masks of at most ``min_area``
        pixels are skipped, as the official code does. ``extra["text_scores"]`` holds the
        (t, n) scores."""
        from fastsam_train.infer.text import score_masks

        texts = [texts] if isinstance(texts, str) else list(texts)
        P.check_texts(texts)
        masks = self._dense(seg)
        rgb = torch.from_numpy(read_image(image, self.options.max_pixels)).permute(2, 0, 1)
        if rgb.shape[1:] != masks.shape[1:]:
            raise P.PromptError(f"image {tuple(rgb.shape[1:])} does not match the masks "
                                f"{tuple(masks.shape[1:])}")
        areas = P.mask_areas(masks) if seg.areas is None else seg.areas
        if not bool((areas > min_area).any()):
            return seg.subset(torch.zeros(0, dtype=torch.long))
        scores = score_masks(clip, rgb, masks, texts, mode, min_area, areas=areas, crop=crop)
        out = _with_masks(seg, masks, scores.argmax(1))
        out.extra["text_scores"] = scores
        return out


def _with_masks(seg: Segmentation, masks: torch.Tensor, index: torch.Tensor) -> Segmentation:
    out = seg.subset(index)
    if out.masks is None:
        index = index.nonzero().flatten() if index.dtype == torch.bool else index
        out.masks, out.rles = masks[index], None
    return out
