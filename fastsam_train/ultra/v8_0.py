"""ultralytics 8.0.120 semantics (the FastSAM authors' trainer) on top of 8.4's classes.

FastSAM was trained with a fork of ultralytics 8.0.120 (reg_max 26, overlap_mask False). Where 8.4
computes something differently, this module subclasses 8.4's class and overrides only what
differs, in our own code (checked against the real 8.0.120 by ``data_tools/parity/parity_8_0.py``):

* Assigner: 8.4 enlarges ground-truth boxes with a side under 16 px to 16 px before choosing the
  anchors inside them; 8.0.120 uses the boxes as they are (tiny SA-1B masks get fewer anchors).
* Mask loss: 8.0.120 averages each image's per-anchor mask losses, sums over images and divides
  by the batch size; 8.4 averages over all foreground anchors of the batch. When the target
  masks and the prototypes differ in size, 8.0.120 resizes the targets (nearest), 8.4 the
  prototypes.
* Polygons: 8.0.120 resamples every polygon to exactly 1000 points evenly in vertex index (longer
  rings lose vertices), and again each time it builds an ``Instances`` (after mosaic, after the
  affine warp, after filtering). 8.4 keeps every vertex and resamples once.
* Affine warp: 8.0.120 takes a warped polygon's box from its vertices inside the image and does
  not clip the polygon to that box; without mosaic it letterboxes to the square first.
* HSV: 8.0.120 multiplies the hue by (1 + gain) (8.4 adds gain x 180) and lets saturation 0 move.
* Random numbers: 8.0.120 draws none for channel order (always BGR -> RGB) and has no CutMix, so
  its chain consumes python's ``random`` in another order than 8.4's.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from ultralytics.data.augment import (
    Compose,
    LetterBox,
    MixUp,
    Mosaic,
    RandomFlip,
    RandomPerspective,
)
from ultralytics.utils.instance import Instances
from ultralytics.utils.loss import v8SegmentationLoss
from ultralytics.utils.ops import crop_mask, xyxy2xywh
from ultralytics.utils.tal import TaskAlignedAssigner

POLYGON_POINTS = 1000  # 8.0.120's fixed polygon length


# --- loss ---------------------------------------------------------------------------------------
class AssignerV80(TaskAlignedAssigner):
    """Task-aligned assignment with 8.0.120's candidate rule: an anchor is a candidate for a
    ground truth when its centre lies strictly inside the box (no enlargement of small boxes)."""

    def select_candidates_in_gts(self, xy_centers, gt_bboxes, mask_gt, eps=1e-9):
        """(A, 2) anchor centres, (B, M, 4) xyxy boxes -> bool (B, M, A)."""
        lt, rb = gt_bboxes.unsqueeze(2).chunk(2, 3)  # (B, M, 1, 2) each
        deltas = torch.cat((xy_centers - lt, rb - xy_centers), dim=-1)  # (B, M, A, 4)
        return deltas.amin(-1) > eps


class SegmentationLossV80(v8SegmentationLoss):
    """8.4's ``v8SegmentationLoss`` with 8.0.120's assigner and mask-loss normalisation.

    Returns what 8.4's does: (box, seg, cls, dfl, 0) x B and a dict of the detached terms."""

    def __init__(self, model: torch.nn.Module, tal_topk: int = 10):
        super().__init__(model, tal_topk)
        self.assigner = AssignerV80(topk=tal_topk, num_classes=self.nc, alpha=0.5, beta=6.0,
                                    stride=self.stride.tolist())

    def loss(self, preds: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        coefficients = preds["mask_coefficient"].permute(0, 2, 1).contiguous()  # (B, A, nm)
        proto = preds["proto"]  # (B, nm, h, w)
        (fg, gt_idx, target_boxes, _, _), det, _ = self.get_assigned_targets_and_loss(preds, batch)
        bs = proto.shape[0]
        if fg.any():
            imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device,
                                 dtype=coefficients.dtype) * self.stride[0]
            seg = self.mask_loss(fg, gt_idx, target_boxes, batch, proto, coefficients, imgsz)
        else:  # keeps every output in the graph (DDP needs gradients for all parameters)
            seg = (proto * 0).sum() + (coefficients * 0).sum()
        loss = torch.stack([det[0], seg * self.hyp.box, det[1], det[2], det[0] * 0])
        return loss * bs, dict(zip(self.loss_names, loss.detach(), strict=True))

    def mask_loss(self, fg: torch.Tensor, gt_idx: torch.Tensor, target_boxes: torch.Tensor,
                  batch: dict, proto: torch.Tensor, coefficients: torch.Tensor,
                  imgsz: torch.Tensor) -> torch.Tensor:
        """Sum over images of the image's mean per-anchor mask loss, divided by B (8.0.120).

        fg (B, A) bool; gt_idx (B, A) target index per anchor; target_boxes (B, A, 4) xyxy input
        pixels; batch ``masks`` (N, h', w') binary (overlap_mask False) or (B, h', w') indices;
        proto (B, nm, h, w); coefficients (B, A, nm); imgsz (2,) input (h, w)."""
        bs, _, mh, mw = proto.shape
        masks = batch["masks"].to(self.device).float()
        if tuple(masks.shape[-2:]) != (mh, mw):
            masks = F.interpolate(masks[None], (mh, mw), mode="nearest")[0]
        batch_idx = batch["batch_idx"].to(self.device).view(-1)
        scale = torch.tensor([mw, mh, mw, mh], device=self.device)
        total = proto.new_zeros(())
        for i in range(bs):
            if not fg[i].any():
                total = total + (proto * 0).sum() + (coefficients * 0).sum()
                continue
            idx = gt_idx[i][fg[i]]
            if self.overlap:
                target = (masks[i] == (idx + 1).view(-1, 1, 1)).float()
            else:
                target = masks[batch_idx == i][idx]
            boxes = target_boxes[i][fg[i]] / imgsz[[1, 0, 1, 0]]  # normalised xyxy
            area = xyxy2xywh(boxes)[:, 2:].prod(1)
            logits = (coefficients[i][fg[i]] @ proto[i].view(proto.shape[1], -1)).view(-1, mh, mw)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            total = total + (crop_mask(bce, boxes * scale).mean(dim=(1, 2)) / area).mean()
        return total / bs


# --- polygons -----------------------------------------------------------------------------------
def resample_ring(ring: np.ndarray, n: int = POLYGON_POINTS) -> np.ndarray:
    """(K, 2) ring -> (n, 2) float32: the closed ring (first point appended) sampled at n evenly
    spaced vertex positions 0 .. K, linearly between vertices (8.0.120's resampling)."""
    closed = np.concatenate((ring, ring[:1]), axis=0)
    x = np.linspace(0, len(closed) - 1, n)
    xp = np.arange(len(closed))
    return np.stack([np.interp(x, xp, closed[:, 0]), np.interp(x, xp, closed[:, 1])],
                    1).astype(np.float32)


_FRACTIONS: dict[int, np.ndarray] = {}


def reresample(segments: np.ndarray) -> np.ndarray:
    """(N, P, 2) -> (N, P, 2) float32: ``resample_ring`` applied to every ring, vectorised (what
    8.0.120 does each time it builds an ``Instances``), with ``np.interp``'s arithmetic in
    float64. For P samples of a closed ring of P + 1 points, sample j < P - 1 lies between
    vertices j and j + 1 (at ``linspace(0, P, P)[j] - j``) and the last is the first vertex."""
    n, p = segments.shape[:2]
    if not n or p < 2:
        return segments
    if p not in _FRACTIONS:
        _FRACTIONS[p] = (np.linspace(0, p, p) - np.arange(p))[:-1, None]
    ring = segments.astype(np.float64)
    step = np.subtract(ring[:, 1:], ring[:, :-1])
    step *= _FRACTIONS[p]
    step += ring[:, :-1]
    out = np.empty_like(segments)
    out[:, :-1] = step
    out[:, -1] = segments[:, 0]
    return out


def warp_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(..., 2) float32 points through the 3x3 float32 matrix ``m``: 8.0.120's homogeneous
    ``[x, y, 1] @ m.T`` divided by the third coordinate. For an affine ``m`` (last row exactly
    0, 0, 1) the float32 sums are formed directly, ~15x faster than numpy's matmul of an (n, 3)
    array; both are float32 sums of the same three products, equal up to the last bit that a
    BLAS kernel's rounding (its choice varies with size and CPU) may change."""
    x, y = points[..., 0], points[..., 1]
    if m[2, 0] == 0 and m[2, 1] == 0 and m[2, 2] == 1:
        return np.stack([(x * m[0, 0] + y * m[0, 1]) + m[0, 2],
                         (x * m[1, 0] + y * m[1, 1]) + m[1, 2]], -1)
    xy = np.concatenate((points.reshape(-1, 2), np.ones((points.size // 2, 1), points.dtype)), 1)
    xy = xy @ m.T
    return (xy[:, :2] / xy[:, 2:3]).reshape(points.shape)


def segment_boxes(segments: np.ndarray, width: float, height: float) -> np.ndarray:
    """(N, P, 2) -> (N, 4) xyxy of each polygon's vertices inside [0, width] x [0, height];
    zeros when none (or when every inside x is 0, as 8.0.120's ``any(x)`` test has it)."""
    x, y = segments[..., 0], segments[..., 1]
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    big = np.array(np.inf, segments.dtype)
    boxes = np.stack([np.where(inside, x, big).min(1), np.where(inside, y, big).min(1),
                      np.where(inside, x, -big).max(1), np.where(inside, y, -big).max(1)], 1)
    boxes[~(inside & (x != 0)).any(1)] = 0
    return boxes.astype(segments.dtype)


# --- augmentations ------------------------------------------------------------------------------
class MosaicV80(Mosaic):
    """8.4's 2x2 mosaic (same random draws as 8.0.120) whose merged polygons are resampled again
    before clipping, as 8.0.120's ``Instances.concatenate`` does; marks the sample as a mosaic."""

    def _cat_labels(self, mosaic_labels: list[dict[str, Any]]) -> dict[str, Any]:
        size = self.imgsz * 2
        instances = Instances.concatenate([m["instances"] for m in mosaic_labels], axis=0)
        instances.segments = reresample(instances.segments)
        instances.clip(size, size)
        good = instances.remove_zero_area_boxes()
        first = mosaic_labels[0]
        return {"im_file": first["im_file"], "ori_shape": first["ori_shape"],
                "resized_shape": (size, size), "instances": instances, "mosaic": True,
                "cls": np.concatenate([m["cls"] for m in mosaic_labels], 0)[good]}

    def apply_instances(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
        labels = super().apply_instances(labels, params)
        labels.pop("ratio_pad", None)  # 8.0.120's mosaic returns a new dict without it
        return labels


class PerspectiveV80(RandomPerspective):
    """8.4's affine warp (same random draws) with 8.0.120's polygon handling: boxes from the
    vertices inside the output, polygons not clipped to them, resampled when rebuilt; a sample
    that is not a mosaic is letterboxed to the square first."""

    def __init__(self, imgsz: int, **kwargs: Any):
        super().__init__(size=(imgsz, imgsz), **kwargs)
        self.letterbox = LetterBox(new_shape=(imgsz, imgsz))

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        if not labels.pop("mosaic", False):
            labels = self.letterbox(labels)
            labels.pop("ratio_pad", None)
        return super().__call__(labels)

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
        if labels["img"].shape[:2] == params["size"][::-1] and (params["M"] == np.eye(3)).all():
            return labels  # 8.0.120 skips the warp of an unchanged image
        return super().apply_image(labels, params)

    def apply_instances(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
        instances = labels.pop("instances")
        instances.convert_bbox(format="xyxy")
        instances.denormalize(*params["orig_shape"][::-1])
        w, h = params["size"]
        segments = instances.segments
        if len(segments):
            warped = warp_points(segments, params["M"])
            boxes = segment_boxes(warped, w, h)
            warped = reresample(warped)
        else:
            boxes, warped = self.apply_bboxes(instances.bboxes, params["M"]), segments
        new = Instances(boxes, warped, None, bbox_format="xyxy", normalized=False)
        new.clip(w, h)
        instances.scale(scale_w=params["scale"], scale_h=params["scale"], bbox_only=True)
        keep = self.box_candidates(box1=instances.bboxes.T, box2=new.bboxes.T,
                                   area_thr=0.01 if len(segments) else 0.10)
        new = new[keep]
        new.segments = reresample(new.segments)
        labels["instances"], labels["cls"] = new, labels["cls"][keep]
        return labels


class HSVV80:
    """8.0.120's colour jitter: gains g = 1 + U(-1, 1) x (hgain, sgain, vgain) from numpy's RNG;
    hue -> (hue x g_h) mod 180, saturation and value x g, clipped to 255; BGR uint8 in place."""

    def __init__(self, hgain: float, sgain: float, vgain: float):
        self.gains = (hgain, sgain, vgain)

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        if any(self.gains):
            r = np.random.uniform(-1, 1, 3) * list(self.gains) + 1
            x = np.arange(0, 256, dtype=r.dtype)
            lut = np.stack([(x * r[0]) % 180, np.clip(x * r[1], 0, 255),
                            np.clip(x * r[2], 0, 255)], -1).astype(np.uint8).reshape(1, 256, 3)
            img = labels["img"]
            cv2.cvtColor(cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), lut), cv2.COLOR_HSV2BGR,
                         dst=img)
        return labels


def train_transforms_v80(dataset: Any, imgsz: int, hyp: Any) -> Compose:
    """8.0.120's ``v8_transforms`` chain on ``dataset`` (a ``SampleBuffer``): mosaic -> affine ->
    mixup (8.4's, whose draws and blend are 8.0.120's) -> HSV -> vertical and horizontal flips
    (8.4's, same draws). Copy-paste and CutMix must be 0: 8.0.120 has no CutMix and its
    copy-paste differs. Takes a ``label_dict`` copy; returns the dict ``Format`` takes."""
    if hyp.copy_paste or hyp.cutmix:
        raise ValueError("augmentations=v8_0_120 supports copy_paste=0 and cutmix=0 only")
    pre = Compose([MosaicV80(dataset, imgsz=imgsz, p=hyp.mosaic),
                   PerspectiveV80(imgsz, degrees=hyp.degrees, translate=hyp.translate,
                                  scale=hyp.scale, shear=hyp.shear, perspective=hyp.perspective)])
    return Compose([pre, MixUp(dataset, pre_transform=pre, p=hyp.mixup),
                    HSVV80(hyp.hsv_h, hyp.hsv_s, hyp.hsv_v),
                    RandomFlip(direction="vertical", p=hyp.flipud),
                    RandomFlip(direction="horizontal", p=hyp.fliplr)])
