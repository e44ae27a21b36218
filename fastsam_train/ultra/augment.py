"""Samples -> ultralytics' label dicts, its train / val transforms (mosaic, mixup, copy-paste,
random perspective, HSV, flips, letterbox, ``Format``) and the collated batch."""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.data.augment import Compose, Format, LetterBox, v8_transforms
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import polygons2masks
from ultralytics.utils import (
    IterableSimpleNamespace,
)
from ultralytics.utils.instance import Instances
from ultralytics.utils.ops import resample_segments, segments2boxes

from fastsam_train.ultra import v8_0


def label_dict(
    image: np.ndarray,
    polygons: list[np.ndarray],
    imgsz: int,
    cls: np.ndarray | None = None,
    im_file: str = "",
    n_points: int = 1000,
    rule: str = "v8_4",
) -> dict[str, Any]:
    """One sample in the form ultralytics' transforms take (``BaseDataset.get_image_and_label``).

    Args:
        image: (H0, W0, 3) uint8 **BGR**; resized so its long side is ``imgsz`` (up or down).
        polygons: N arrays (K_i, 2) of x, y normalised to [0, 1] (one ring per instance).
        imgsz: training/eval image size.
        cls: (N,) class ids, default all 0.
        im_file: sample name (Mosaic requires the key).
        n_points: polygons are resampled to max(n_points, longest K + 1) points keeping every
            vertex (8.4); with ``rule="v8_0_120"`` to exactly 1000 points, evenly in vertex index.

    Returns:
        dict with ``img`` (H, W, 3), ``ori_shape`` (H0, W0), ``resized_shape`` (H, W),
        ``ratio_pad``, ``im_file``, ``cls`` float32 (N, 1) and ``instances``: ``Instances`` with
        normalised xywh boxes (N, 4) from the polygons and segments (N, P, 2).
    """
    h0, w0 = image.shape[:2]
    r = imgsz / max(h0, w0)
    if r != 1:  # same rounding as BaseDataset.load_image
        size = (min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    n = len(polygons)
    segs = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in polygons]
    if n and rule == "v8_0_120":
        segments = np.stack([v8_0.resample_ring(s) for s in segs], 0)
        bboxes = segments2boxes(segs).astype(np.float32)
        n_points = v8_0.POLYGON_POINTS
    elif n:
        n_points = max(n_points, max(len(s) for s in segs) + 1)
        segments = np.stack(resample_segments(segs, n=n_points), 0)
        bboxes = segments2boxes(segs).astype(np.float32)
    else:
        segments, bboxes = np.zeros((0, n_points, 2), np.float32), np.zeros((0, 4), np.float32)
    cls = np.zeros(n) if cls is None else np.asarray(cls)
    h, w = image.shape[:2]
    return {
        "im_file": im_file,
        "img": image,
        "ori_shape": (h0, w0),
        "resized_shape": (h, w),
        "ratio_pad": (h / h0, w / w0),
        "cls": cls.astype(np.float32).reshape(n, 1),
        "instances": Instances(bboxes, segments, bbox_format="xywh", normalized=True),
    }


class SampleBuffer:
    """Bounded FIFO of the last ``maxlen`` samples (``label_dict`` outputs) of a stream: the
    ``dataset`` that ultralytics' mix transforms (Mosaic, MixUp, CutMix, CopyPaste) draw from.

    What they require of it: ``cache`` != "ram" (Mosaic then picks its 3 partners with
    ``random.choices(list(dataset.buffer))``), ``buffer`` (indices), ``len()`` (MixUp/CutMix use
    ``randint(0, len - 1)``), ``get_image_and_label(i)`` returning a dict they may mutate in place,
    and ``data.get("flip_idx")``, ``use_obb``, ``use_keypoints`` read by ``v8_transforms``.
    Each DataLoader worker holds its own buffer (as each holds its own ultralytics dataset).
    Memory: maxlen x imgsz^2 x 3 bytes (ultralytics uses min(8 x batch, 1000)).

    Use: ``out = transforms(buffer.push(label_dict(...)))``.
    """

    cache = None
    use_obb = False
    use_keypoints = False

    def __init__(self, maxlen: int = 64) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self.data: dict[str, Any] = {}  # v8_transforms reads data.get("flip_idx") (keypoints only)
        self._items: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def buffer(self) -> range:
        return range(len(self._items))

    def get_image_and_label(self, index: int) -> dict[str, Any]:
        """A deep copy of sample ``index`` (Mosaic denormalises and shifts instances in place)."""
        return copy.deepcopy(self._items[index])

    def push(self, labels: dict[str, Any]) -> dict[str, Any]:
        """Append a sample (dropping the oldest when full); return a copy of it to transform.
        The sample itself may be one of its mosaic partners, as in ultralytics."""
        self._items.append(labels)
        return self.get_image_and_label(-1)


def polygon_masks(segments: np.ndarray, height: int, width: int, ratio: int) -> np.ndarray:
    """(N, P, 2) pixel polygons -> uint8 (N, height // ratio, width // ratio) binary masks, equal
    to ultralytics' ``polygons2masks`` (``fillPoly`` of the int32-truncated polygon at full size,
    then a bilinear ``resize`` by 1/ratio) but drawn and resized only around each polygon: the
    resize by an integer factor reads only the pixels of each output cell's own ratio x ratio
    block, so a crop aligned to multiples of ratio with one cell of margin gives the same cells.
    """
    if height % ratio or width % ratio:
        return polygons2masks((height, width), segments, color=1, downsample_ratio=ratio)
    out = np.zeros((len(segments), height // ratio, width // ratio), np.uint8)
    points = np.asarray(segments, dtype=np.float32).astype(np.int32)
    low = np.maximum((points.min(1) // ratio - 1) * ratio, 0).tolist()
    high = np.minimum((points.max(1) // ratio + 2) * ratio, (width, height)).tolist()
    for i, poly in enumerate(points):
        (x0, y0), (x1, y1) = low[i], high[i]
        if x1 <= x0 or y1 <= y0:
            continue
        crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(crop, [poly - (x0, y0)], color=1)
        out[i, y0 // ratio:y1 // ratio, x0 // ratio:x1 // ratio] = cv2.resize(
            crop, ((x1 - x0) // ratio, (y1 - y0) // ratio))
    return out


class TrainFormat(Format):
    """ultralytics' ``Format`` (xywh normalised boxes, ``batch_idx``, masks at 1/mask_ratio)
    without the work the loss never reads: no ``sem_masks`` (8.4 builds an N x H x W
    ``torch.where`` + ``min`` per image for them), and binary masks (overlap_mask False) drawn
    per instance inside its box (``polygon_masks``). ``draw_bgr`` False: always BGR -> RGB with
    no random draw (8.0.120); True: 8.4's ``bgr`` probability, one draw per image."""

    def __init__(self, mask_ratio: int, mask_overlap: bool, bgr: float, draw_bgr: bool = True):
        super().__init__(bbox_format="xywh", normalize=True, return_mask=True, batch_idx=True,
                         mask_ratio=mask_ratio, mask_overlap=mask_overlap, bgr=bgr)
        self.draw_bgr = draw_bgr

    def apply_instances(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
        if self.mask_overlap:
            labels = super().apply_instances(labels, params)
            labels.pop("sem_masks", None)
            return labels
        instances, h, w, n = params["instances"], params["h"], params["w"], params["nl"]
        r = self.mask_ratio
        masks = polygon_masks(instances.segments, h, w, r) if n else \
            np.zeros((0, h // r, w // r), np.uint8)
        labels["masks"] = torch.from_numpy(masks)
        labels["cls"] = torch.from_numpy(params["cls"]) if n else torch.zeros(0, 1)
        boxes = torch.from_numpy(instances.bboxes) if n else torch.zeros((0, 4))
        boxes[:, [0, 2]] /= w
        boxes[:, [1, 3]] /= h
        labels["bboxes"] = boxes
        labels["batch_idx"] = torch.zeros(n)
        return labels

    def _format_img(self, img: np.ndarray) -> torch.Tensor:
        if self.draw_bgr:
            return super()._format_img(img)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[::-1]))


def _format(hyp: IterableSimpleNamespace, bgr: float) -> TrainFormat:
    return TrainFormat(hyp.mask_ratio, hyp.overlap_mask, bgr,
                       draw_bgr=hyp.augment_rule != "v8_0_120")


def build_train_transforms(
    dataset: SampleBuffer, imgsz: int, hyp: IterableSimpleNamespace
) -> Compose:
    """ultralytics' training pipeline (``YOLODataset.build_transforms`` with augment=True):
    Mosaic (p=hyp.mosaic) -> [CopyPaste] -> RandomPerspective to (imgsz, imgsz) -> MixUp -> CutMix
    -> HSV -> flips -> ``TrainFormat``; with ``hyp.augment_rule == "v8_0_120"`` 8.0.120's chain
    (``v8_0.train_transforms_v80``). Takes a ``label_dict`` copy; returns ``img`` uint8 (3,
    imgsz, imgsz) RGB, ``cls`` (n, 1), ``bboxes`` (n, 4), ``masks``, ``batch_idx`` zeros (n,),
    metadata.
    """
    if hyp.augment_rule == "v8_0_120":
        chain = v8_0.train_transforms_v80(dataset, imgsz, hyp).tolist()
    else:
        chain = v8_transforms(dataset, imgsz, hyp).tolist()
    return Compose([*chain, _format(hyp, hyp.bgr)])


def build_val_transforms(imgsz: int, hyp: IterableSimpleNamespace) -> Compose:
    """ultralytics' eval pipeline: ``LetterBox(imgsz, scaleup=False)`` (pad to square, 114 grey)
    then ``TrainFormat``; same output keys as ``build_train_transforms``."""
    return Compose([LetterBox(new_shape=imgsz, scaleup=False), _format(hyp, 0.0)])


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``YOLODataset.collate_fn``: stacks ``img`` (B, 3, H, W), concatenates ``cls``, ``bboxes``,
    ``masks``, offsets ``batch_idx`` by sample position; other keys become tuples."""
    return YOLODataset.collate_fn(samples)
