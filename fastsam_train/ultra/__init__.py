"""The one adapter around ultralytics (8.4.x): model, hyperparameters, loss, augmentations,
optimizer, schedule, EMA and checkpoints. Nothing else in the project imports ultralytics.

Facts about ultralytics 8.4 that the callers rely on (checked against 8.4.190):

* Batch format (``collate``): ``img`` uint8 (B, 3, H, W) **RGB** (``Format`` flips the BGR input),
  ``batch_idx`` float (N,), ``cls`` float (N, 1), ``bboxes`` float (N, 4) normalised xywh,
  ``masks`` uint8/int32 (B, H/r, W/r) instance indices 1..n per image when ``overlap_mask`` (the
  default; a pixel keeps only the smallest covering instance) else (N, H/r, W/r) binary, with
  r = ``mask_ratio`` (4); plus ``sem_masks``, ``im_file``, ``ori_shape``, ``resized_shape``,
  ``ratio_pad`` lists. The model wants ``img.float() / 255``.
* Each loss component is a mean over the whole batch's targets times its gain (box, cls, dfl are
  divided by the summed target scores, clamped to >= 1, so they scale with B while that sum is
  < 1, early on; seg by the number of foreground anchors), and the total is then multiplied by
  the batch size B, so the gradient grows with the batch. ultralytics compensates by stepping every
  ``accumulate = max(round(nbs / batch), 1)`` batches (nbs = 64), scales weight decay by
  ``batch * accumulate / nbs``, clips the gradient norm at 10, and multiplies the loss by the world
  size under DDP (which averages gradients). Lightning divides the loss by
  ``accumulate_grad_batches``: multiply it back to match.
* ``RULES``: where 8.0.120 (the FastSAM authors' trainer) and 8.4 differ, the loss, the "auto"
  optimizer, the warmup and the augmentations take a rule, "v8_0_120" or "v8_4" (the
  differences are listed in ``v8_0.py``; ``data_tools/parity_8_0.py`` checks them).
* ``v8SegmentationLoss`` and ``ModelEMA`` capture tensors/devices when built (EMA on its first
  ``update``): build them after the model is on its final device. The EMA copy is no submodule.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch import nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.cfg import get_cfg
from ultralytics.data.augment import Compose, Format, LetterBox, v8_transforms
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import polygons2masks
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.nn.tasks import SegmentationModel, torch_safe_load
from ultralytics.utils import (
    DEFAULT_CFG_DICT,
    DEFAULT_CFG_KEYS,
    ROOT,
    YAML,
    IterableSimpleNamespace,
)
from ultralytics.utils.instance import Instances
from ultralytics.utils.loss import v8SegmentationLoss
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import process_mask, resample_segments, segments2boxes
from ultralytics.utils.torch_utils import ModelEMA, one_cycle

from fastsam_train.ultra import v8_0

__all__ = [
    "ImportReport", "ModelEMA", "OptimizerChoice", "SampleBuffer", "apply_warmup", "build_loss",
    "build_model", "build_optimizer", "build_train_transforms", "build_val_transforms", "collate",
    "export_ultralytics_checkpoint", "hyperparameters", "import_ultralytics_checkpoint",
    "RULES", "TrainFormat", "accumulate_steps", "label_dict", "lr_factor", "polygon_masks",
    "optimizer_iterations", "optimizer_param_groups",
    "resolve_optimizer", "segment_predictions", "validate_model_config", "warmup_iterations",
    "warmup_lr", "warmup_momentum", "without_mix",
]  # fmt: skip

LOSS_NAMES = ("box", "seg", "cls", "dfl")  # order of ultralytics' loss vector (its 5th, sem, is 0)
EMA_ATTRS = ("yaml", "nc", "args", "names", "stride")  # copied by ema.update_attr before saving


RULES = ("v8_0_120", "v8_4")  # whose semantics: 8.0.120 (FastSAM's trainer) or the installed 8.4
RULE_KEYS = ("loss_rule", "optimizer_rule", "schedule_rule", "augment_rule")  # all default "v8_4"


# --- model, hyperparameters, loss ---------------------------------------------------------------
def hyperparameters(**overrides: Any) -> IterableSimpleNamespace:
    """ultralytics' default.yaml merged with ``overrides`` (unknown keys raise SyntaxError).

    Holds what the loss (``box`` 7.5, ``cls`` 0.5, ``dfl`` 1.5, ``overlap_mask``, ``mask_ratio``)
    and the augmentations (``mosaic``, ``degrees``, ``hsv_h`` ...) read as attributes, plus the
    ``RULE_KEYS`` (each one of ``RULES``; default "v8_4"; anything else raises ValueError).
    """
    rules = {k: overrides.pop(k, "v8_4") for k in RULE_KEYS} if overrides else \
        dict.fromkeys(RULE_KEYS, "v8_4")
    bad = {k: v for k, v in rules.items() if v not in RULES}
    if bad:
        raise ValueError(f"{bad}: rules must be one of {RULES}")
    hyp = get_cfg(DEFAULT_CFG_DICT, overrides or None)
    for key, value in rules.items():
        setattr(hyp, key, value)
    return hyp


ARCHITECTURES = ("yolov8-seg",)  # packaged model YAMLs a config or a file may name
MODEL_LIMITS = {"nc": (1, 1000), "reg_max": (1, 64), "prototypes": (1, 256)}  # inclusive


def validate_model_config(config: Any, source: str = "model config") -> dict[str, Any]:
    """``{arch, scale, nc, reg_max[, prototypes]}`` checked for ``build_model``; raises ValueError.

    Values read from a file (weights, checkpoints, configs) must never choose code: ``arch`` must
    be one of ``ARCHITECTURES`` (a name, never a path: ultralytics ``eval``s strings of a model
    YAML), ``scale`` one of that YAML's scales, and ``nc`` / ``reg_max`` / ``prototypes`` plain
    integers within ``MODEL_LIMITS``. Unknown keys are refused. ``source`` names the origin in
    the message."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: model config must be a mapping, got {type(config).__name__}")
    unknown = sorted(map(str, set(config) - {"arch", "scale", *MODEL_LIMITS}))
    if unknown:
        raise ValueError(f"{source}: unknown model config keys {unknown}")
    arch = config.get("arch", "yolov8-seg")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"{source}: arch {arch!r} is not a packaged architecture "
                         f"{list(ARCHITECTURES)}")
    scales = sorted(YAML.load(ROOT / "cfg" / "models" / "v8" / f"{arch}.yaml")["scales"])
    scale = config.get("scale")
    if not isinstance(scale, str) or scale not in scales:
        raise ValueError(f"{source}: scale {scale!r} not in {arch} scales {scales}")
    out = {"arch": arch, "scale": scale}
    for key, (low, high) in MODEL_LIMITS.items():
        value = config.get(key, {"nc": 1, "reg_max": 26, "prototypes": 32}[key])
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{source}: {key} must be an integer in [{low}, {high}], "
                             f"got {value!r}")
        out[key] = value
    return out


def build_model(
    scale: str,
    nc: int = 1,
    reg_max: int = 26,
    arch: str = "yolov8-seg",
    hyp: IterableSimpleNamespace | None = None,
    prototypes: int = 32,
) -> SegmentationModel:
    """Randomly initialised ultralytics ``SegmentationModel`` from the packaged ``{arch}.yaml``.

    The YAML is passed as a dict: from a file path ultralytics would take the scale from the file
    name and ignore ours. ``model.args`` gets ``hyp`` (default ``hyperparameters()``), as the loss
    reads its gains there. Params for nc=1, reg_max=26: n 3.63M, s 12.32M, x 72.23M.
    ``prototypes``: number of mask prototypes (YOLACT's k; 32 in YOLOv8-seg and FastSAM).
    Forward in train mode: (B, 3, H, W) float in [0, 1] -> dict of ``boxes`` (B, 4*reg_max, A),
    ``scores`` (B, nc, A), ``mask_coefficient`` (B, 32, A), ``proto`` (B, 32, H/4, W/4), ``feats``.
    """
    checked = validate_model_config({"arch": arch, "scale": scale, "nc": nc,
                                     "reg_max": reg_max, "prototypes": prototypes})
    cfg = YAML.load(ROOT / "cfg" / "models" / "v8" / f"{checked['arch']}.yaml")
    cfg.update(scale=scale, nc=nc, reg_max=reg_max)
    head = cfg["head"][-1]  # [[from], 1, "Segment", [nc, nm, npr]]: nm = mask prototypes
    if head[2] != "Segment":
        raise ValueError(f"{arch}: the last head layer is {head[2]}, not Segment")
    head[3] = [head[3][0], int(prototypes), *head[3][2:]]
    model = SegmentationModel(cfg, ch=3, nc=nc, verbose=False)
    model.args = hyp if hyp is not None else hyperparameters()
    return model


def build_loss(model: SegmentationModel, rule: str = "v8_4"
               ) -> Callable[[Any, dict], tuple[torch.Tensor, dict]]:
    """ultralytics' ``v8SegmentationLoss`` for ``model`` (needs ``model.args`` as a namespace);
    ``rule="v8_0_120"``: with 8.0.120's assigner and mask-loss normalisation (``v8_0.py``).

    Returns ``loss_fn(preds, batch) -> (total, items)``: ``preds`` is the model output on
    ``batch["img"]`` (float (B, 3, H, W) in [0, 1]), ``batch`` the ``collate`` dict
    (``batch_idx``, ``cls``, ``bboxes`` normalised xywh, ``masks``; on the model's device).
    ``total`` is the scalar to backpropagate: the sum over box, seg, cls, dfl of
    (batch mean x gain), **times B** (see the module docstring). ``items`` maps ``LOSS_NAMES``
    to those detached terms without the B factor.
    Build it after moving the model to its device: the criterion keeps that device.
    """
    if rule not in RULES:
        raise ValueError(f"loss rule {rule!r} not in {RULES}")
    criterion = v8_0.SegmentationLossV80(model) if rule == "v8_0_120" else \
        v8SegmentationLoss(model)

    def loss_fn(preds: Any, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _ = criterion(preds, batch)  # (5,): box, seg, cls, dfl, sem, each x batch size
        items = loss.detach()[:4] / batch["img"].shape[0]
        return loss.sum(), dict(zip(LOSS_NAMES, items, strict=True))

    return loss_fn


# --- samples, augmentations, batches ------------------------------------------------------------
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


def without_mix(hyp: IterableSimpleNamespace) -> IterableSimpleNamespace:
    """``hyp`` with mosaic, mixup, cutmix and copy-paste off: ultralytics' ``close_mosaic``."""
    return hyperparameters(**{**vars(hyp), "mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0,
                              "copy_paste": 0.0})


# --- predictions --------------------------------------------------------------------------------
def segment_predictions(
    raw: torch.Tensor, proto: torch.Tensor, shape: tuple[int, int], conf: float, iou: float,
    max_det: int,
) -> list[dict[str, torch.Tensor]]:
    """Eval-mode model output -> per image ``boxes`` (n, 4) xyxy pixels, ``scores`` (n,),
    ``coefficients`` (n, 32) and ``masks`` uint8 (n, H/4, W/4) at prototype resolution.

    raw: (B, 4 + nc + 32, A) first element of the eval output; proto: (B, 32, H/4, W/4);
    shape: network input (H, W). Class-agnostic NMS (ultralytics' ``non_max_suppression``) and
    ``process_mask`` (coefficients x prototypes, sigmoid > 0.5, cropped to the box).
    """
    outputs = non_max_suppression(raw, conf, iou, agnostic=True, max_det=max_det, nc=1)
    results = []
    for i, det in enumerate(outputs):
        masks = process_mask(proto[i], det[:, 6:], det[:, :4], tuple(shape), upsample=False)
        results.append({"boxes": det[:, :4], "scores": det[:, 4], "coefficients": det[:, 6:],
                        "masks": masks})
    return results


# --- optimizer and schedule ---------------------------------------------------------------------
class OptimizerChoice(NamedTuple):
    name: str
    lr: float
    momentum: float
    warmup_bias_lr: float


def optimizer_iterations(dataset_size: int, batch_size: int, epochs: int, nbs: int = 64) -> int:
    """The ``iterations`` ultralytics feeds to "auto": optimizer steps at the nominal batch."""
    return math.ceil(dataset_size / max(batch_size, nbs)) * epochs


def resolve_optimizer(
    name: str, lr: float, momentum: float, warmup_bias_lr: float, iterations: int, nc: int,
    rule: str = "v8_4",
) -> OptimizerChoice:
    """ultralytics' "auto" rule: > 10000 iterations -> SGD (``rule="v8_0_120"``, FastSAM's
    trainer, BaseTrainer.build_optimizer line 633) or MuSGD (8.4), lr 0.01, momentum 0.9 (the
    warmup then ramps momentum to ``hyp.momentum``); else AdamW lr round(0.002 * 5 / (4 + nc), 6)
    (0.002 for nc=1), momentum 0.9 (Adam beta1). Both versions' auto also starts the bias warmup
    at 0. Any other name passes through unchanged."""
    if rule not in RULES:
        raise ValueError(f"optimizer rule {rule!r} not in {RULES}")
    if name.lower() != "auto":
        return OptimizerChoice(name, lr, momentum, warmup_bias_lr)
    if iterations > 10000:
        return OptimizerChoice("SGD" if rule == "v8_0_120" else "MuSGD", 0.01, 0.9, 0.0)
    return OptimizerChoice("AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9, 0.0)


def optimizer_param_groups(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, name: str = "SGD"
) -> list[dict[str, Any]]:
    """The three groups of ``BaseTrainer.build_optimizer`` for a torch optimizer ``name``:
    "weight" (conv/linear weights, ``weight_decay``), "bn" (norm-layer weights, no decay) and
    "bias" (no decay), tagged by ``param_group`` for ``apply_warmup``. SGD gets nesterov; Adam*
    get betas (momentum, 0.999). Frozen parameters are included, as in ultralytics."""
    norms = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
    groups: dict[str, list[nn.Parameter]] = {"weight": [], "bn": [], "bias": []}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            no_decay = isinstance(module, norms) or "logit_scale" in full
            kind = "bias" if "bias" in full else "bn" if no_decay else "weight"
            groups[kind].append(param)
    if name in {"Adam", "Adamax", "AdamW", "NAdam", "RAdam"}:
        args = {"lr": lr, "betas": (momentum, 0.999)}
    else:
        args = {"lr": lr, "momentum": momentum, **({"nesterov": True} if name == "SGD" else {})}
    decay = {"weight": weight_decay, "bn": 0.0, "bias": 0.0}
    return [
        {"params": p, **args, "weight_decay": decay[k], "param_group": k} for k, p in groups.items()
    ]


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """ultralytics' own ``BaseTrainer.build_optimizer`` for an explicit ``name`` (SGD, AdamW, ...,
    MuSGD); resolve "auto" with ``resolve_optimizer`` first."""
    if name.lower() == "auto":
        raise ValueError("resolve 'auto' with resolve_optimizer() first")
    # With an explicit name the method reads nothing from the trainer, so no trainer is needed.
    return BaseTrainer.build_optimizer(None, model, name, lr, momentum, weight_decay)


def lr_factor(epoch: float, epochs: int, lrf: float, cos_lr: bool = False) -> float:
    """ultralytics' LambdaLR factor for ``epoch``: linear ``max(1 - epoch/epochs, 0) * (1 - lrf) +
    lrf`` (1 -> lrf), or its cosine ``one_cycle`` when ``cos_lr``. Epoch e trains at lr0 x f(e)."""
    if cos_lr:
        return one_cycle(1, lrf, epochs)(epoch)
    return max(1 - epoch / epochs, 0) * (1.0 - lrf) + lrf


def warmup_iterations(warmup_epochs: float, epochs: int, batches_per_epoch: int,
                      rule: str = "v8_4") -> int:
    """Warmup length in batches (0: none). 8.4: ``round(min(warmup_epochs, epochs - 1) *
    batches_per_epoch)`` (the last epoch is never warmup); ``rule="v8_0_120"``:
    ``max(round(warmup_epochs * batches_per_epoch), 100)`` (at least 100 batches)."""
    if rule not in RULES:
        raise ValueError(f"warmup rule {rule!r} not in {RULES}")
    if rule == "v8_0_120":
        return max(round(warmup_epochs * batches_per_epoch), 100) if warmup_epochs > 0 else 0
    warm = min(warmup_epochs, max(epochs - 1, 0))
    return round(warm * batches_per_epoch) if warm > 0 else 0


def accumulate_steps(ni: int, nw: int, nbs: int, batch: int, rule: str = "v8_4") -> int:
    """Batches per optimizer step at global batch ``ni``: ``max(round(nbs / batch), 1)``; during
    warmup (``ni <= nw``) ramped linearly from 1, towards that value (8.4) or towards the
    unrounded ``nbs / batch`` (``rule="v8_0_120"``), rounded half to even as numpy does.
    ``batch``: the global batch (all ranks)."""
    nominal = max(round(nbs / batch), 1)
    if nw and ni <= nw:
        target = nbs / batch if rule == "v8_0_120" else nominal
        return max(1, int(np.interp(ni, [0, nw], [1, target]).round()))
    return nominal


def warmup_lr(ni: int, nw: int, target_lr: float, is_bias: bool, warmup_bias_lr: float) -> float:
    """LR at batch ``ni`` of ``nw`` warmup batches: linear from ``warmup_bias_lr`` (bias group) or 0
    (others) to ``target_lr`` (= initial_lr x lr_factor(epoch)), reached at ni == nw."""
    return float(np.interp(ni, [0, nw], [warmup_bias_lr if is_bias else 0.0, target_lr]))


def warmup_momentum(ni: int, nw: int, warmup_momentum: float, momentum: float) -> float:
    """Momentum (SGD; Adam groups have none) at batch ``ni``: linear ``warmup_momentum`` (0.8) ->
    ``momentum``. ultralytics also ramps its accumulate from 1 to its nominal value here."""
    return float(np.interp(ni, [0, nw], [warmup_momentum, momentum]))


def apply_warmup(
    optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch_lr_factor: float, hyp: Any
) -> bool:
    """Set every group's lr (and momentum) for global batch ``ni`` as ultralytics does while
    ``ni <= nw``; groups need ``initial_lr`` (create the LambdaLR first) and a ``param_group``
    tag. Reads ``hyp.warmup_bias_lr``, ``warmup_momentum``, ``momentum``. True if applied."""
    if not nw or ni > nw:
        return False
    for group in optimizer.param_groups:
        target = group["initial_lr"] * epoch_lr_factor
        bias = group.get("param_group") == "bias"
        group["lr"] = warmup_lr(ni, nw, target, bias, hyp.warmup_bias_lr)
        if "momentum" in group:
            group["momentum"] = warmup_momentum(ni, nw, hyp.warmup_momentum, hyp.momentum)
    return True


# --- checkpoints --------------------------------------------------------------------------------
def export_ultralytics_checkpoint(
    model: SegmentationModel,
    path: str | Path,
    names: dict[int, str] | None = None,
    half: bool = True,
    **meta: Any,
) -> Path:
    """Write ``model`` as a final ultralytics checkpoint (``strip_optimizer`` layout) that
    ``ultralytics.YOLO(path)`` loads and predicts with. The pickled full model is a copy (FP16 if
    ``half``) with ``args`` as a dict and no criterion; ``meta`` is stored under "fastsam_meta".
    Pass the EMA copy (``ema.ema``) for release weights, as ultralytics does."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"ultralytics only loads '.pt' checkpoints, got {path.name}")
    m = copy.deepcopy(model).cpu().float()
    m.criterion = None
    m.names = names or m.names
    args = getattr(model, "args", None) or {}
    args = {**DEFAULT_CFG_DICT, **(args if isinstance(args, dict) else vars(args))}
    args["task"] = "segment"
    m.args = {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS}  # as strip_optimizer keeps
    if half:
        m.half()
    for p in m.parameters():
        p.requires_grad = False
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "epoch": -1,
        "best_fitness": None,
        "model": m,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": m.args,
        "fastsam_meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


class ImportReport(NamedTuple):
    loaded: list[str]
    missing: list[str]  # in our model, absent from the checkpoint
    unexpected: list[str]  # in the checkpoint, absent from our model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, checkpoint, model shape


def import_ultralytics_checkpoint(
    path: str | Path, model: nn.Module, allow_pickle: bool = False, strict: bool = False
) -> ImportReport:
    """Copy weights from an ultralytics ``.pt`` (its "ema", else "model") into ``model`` by
    state_dict key, skipping shape mismatches. Such files are pickled full models: unpickling runs
    code from the file, so it needs ``allow_pickle=True`` (trusted files only). Old module paths
    (``ultralytics.yolo.*``, e.g. the original FastSAM weights) are remapped by ultralytics'
    loader. ``strict`` raises if anything was missing or mismatched."""
    if not allow_pickle:
        raise ValueError(
            f"{path}: ultralytics checkpoints are pickled Python objects and loading one can run "
            "arbitrary code. Pass allow_pickle=True only for files you trust."
        )
    if not Path(path).is_file():
        raise FileNotFoundError(path)  # else ultralytics would try to download a same-named asset
    ckpt, _ = torch_safe_load(str(path), safe_only=False)
    source = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(source, nn.Module):
        raise TypeError(f"{path} holds no ultralytics model under 'ema' or 'model'")
    theirs, ours = source.float().state_dict(), model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(ours[k].shape))
        for k, v in theirs.items()
        if k in ours and v.shape != ours[k].shape
    ]
    bad = {k for k, _, _ in mismatched}
    matched = {k: v for k, v in theirs.items() if k in ours and k not in bad}
    report = ImportReport(
        loaded=sorted(matched),
        missing=sorted(set(ours) - set(theirs)),
        unexpected=sorted(set(theirs) - set(ours)),
        mismatched=mismatched,
    )
    if strict and (report.missing or report.mismatched):
        raise RuntimeError(f"{path}: missing {report.missing}, mismatched {report.mismatched}")
    model.load_state_dict(matched, strict=False)
    return report


# --- inference (fastsam_train.infer) ------------------------------------------------------------
class _InferenceNetwork(nn.Module):
    """(B, 3, H, W) float RGB in [0, 1] -> ``raw`` (B, 4 + nc + 32, A): xywh boxes in input pixels,
    sigmoid class scores, mask coefficients; and ``proto`` (B, 32, H/4, W/4)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (raw, proto), _ = self.model(x)  # eval mode: ((predictions, prototypes), raw head dict)
        return raw, proto


def inference_network(model: SegmentationModel, fuse: bool = True) -> nn.Module:
    """``model`` in eval mode (Conv+BN folded when ``fuse``, about 10-20 % faster) wrapped to return
    only ``(raw, proto)``: the two tensors post-processing needs and ONNX exports. Weights are
    channels-last, the layout oneDNN's CPU convolutions and GPU tensor cores run fastest on
    (measured here at 1024: FastSAM-s 16 %, FastSAM-x 8 % less forward time; outputs equal to
    1e-4). Modifies ``model`` in place."""
    model = model.float().eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    if fuse:
        model = model.fuse(verbose=False)
    return _InferenceNetwork(model).eval()


def read_pickled_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """float32 state_dict of the model in an ultralytics ``.pt`` (its "ema", else "model").

    **Unpickles the file: it runs code from it.** Callers must have the user's explicit consent.
    ultralytics' loader remaps the module paths of 8.0.x pickles (``ultralytics.yolo.utils`` ->
    ``ultralytics.utils``, ``ultralytics.yolo.v8`` -> ``ultralytics.models.yolo``, ...), which
    is what lets the official FastSAM-x.pt / FastSAM-s.pt (trained with 8.0.x) load here."""
    if not Path(path).is_file():
        raise FileNotFoundError(path)  # else ultralytics would try to download a same-named asset
    ckpt, _ = torch_safe_load(str(path), safe_only=False)
    source = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(source, nn.Module):
        raise TypeError(f"{path} holds no ultralytics model under 'ema' or 'model'")
    return {k: v.float() if v.is_floating_point() else v for k, v in source.state_dict().items()}


def model_config_from_state_dict(
    state_dict: dict[str, torch.Tensor], arch: str = "yolov8-seg"
) -> dict[str, Any]:
    """``{arch, scale, nc, reg_max[, prototypes]}`` of a YOLOv8-seg state_dict, from tensor
    shapes: the scale from the stem width (``model.0.conv.weight``: n 16, s 32, m 48, l 64, x 80
    channels), reg_max from the DFL conv, nc from the last class conv, prototypes from the proto
    module (only when not 32). ``build_model(**config)`` rebuilds it."""
    validate_model_config({"arch": arch, "scale": "n"}, "state_dict reader")
    widths = {math.ceil(min(64, mc) * w / 8) * 8: s
              for s, (_, w, mc) in YAML.load(ROOT / "cfg" / "models" / "v8" / f"{arch}.yaml")
              ["scales"].items()}
    stem = state_dict.get("model.0.conv.weight")
    dfl = [v for k, v in state_dict.items() if k.endswith(".dfl.conv.weight")]
    cls = sorted((k for k in state_dict if ".cv3.0." in k and k.endswith(".weight")),
                 key=lambda k: k.split(".cv3.0.")[1])
    if stem is None or len(dfl) != 1 or not cls or stem.shape[0] not in widths:
        raise ValueError(f"not a {arch} state_dict (stem {None if stem is None else stem.shape}, "
                         f"{len(dfl)} DFL layers)")
    proto = [v for k, v in state_dict.items() if k.endswith(".proto.cv3.conv.weight")]
    config = {"arch": arch, "scale": widths[stem.shape[0]],
              "nc": int(state_dict[cls[-1]].shape[0]), "reg_max": int(dfl[0].shape[1])}
    if proto and proto[0].shape[0] != 32:  # the default is left out (older files lack it)
        config["prototypes"] = int(proto[0].shape[0])
    validate_model_config(config, "state_dict shapes")
    return config
