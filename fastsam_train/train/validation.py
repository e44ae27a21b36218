"""Validation during training: class-agnostic box and mask AR@100 on the held-out shards.

Ground truth and predictions are both taken in the letterboxed network frame. Boxes are
compared at the input resolution; masks at the prototype resolution (input / mask_ratio), where
the loss also sees them, with COCO area ranges kept in input pixels. The recall itself is the
project's one recall function (pycocotools, ``useCats=0``), gathered over ranks first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fastsam_train.io import atomic_write_image
from fastsam_train.masks import encode_mask
from fastsam_train.metrics.recall import average_recall
from fastsam_train.plots import top_mask_overlay


def gt_instance_masks(batch: dict, index: int, overlap: bool) -> np.ndarray:
    """(n_i, h, w) uint8 ground-truth masks of image ``index`` of a collated batch."""
    sel = (batch["batch_idx"] == index).cpu().numpy()
    if overlap:  # (B, h, w) index maps, instance k of the image is value k + 1
        index_map = batch["masks"][index].cpu().numpy()
        return np.stack([index_map == k + 1 for k in range(int(sel.sum()))]).astype(np.uint8) \
            if sel.any() else np.zeros((0, *index_map.shape), np.uint8)
    return batch["masks"][torch.from_numpy(sel)].cpu().numpy().astype(np.uint8)


class ValidationAccumulator:
    """Collects per-image GT and predictions (COCO dicts), computes AR, renders overlays."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.images, self.gt_box, self.gt_mask, self.dt_box, self.dt_mask = [], [], [], [], []
        self.overlays: list[np.ndarray] = []

    def add_batch(self, batch: dict, preds: list[dict], overlap: bool, keep_images: int) -> None:
        height, width = batch["img"].shape[2:]
        ratio = batch["masks"].shape[-1] / width
        for i, pred in enumerate(preds):
            image_id = len(self.images) + 1 + _rank() * 10**7
            self.images.append({"id": image_id, "height": height, "width": width})
            sel = batch["batch_idx"] == i
            boxes = batch["bboxes"][sel].cpu().numpy() * [width, height, width, height]
            masks = gt_instance_masks(batch, i, overlap)
            for (cx, cy, w, h), mask in zip(boxes, masks, strict=True):
                common = {"image_id": image_id, "category_id": 1, "iscrowd": 0,
                          "area": float(w * h), "id": len(self.gt_box) + 1 + _rank() * 10**8}
                self.gt_box.append({**common, "bbox": [cx - w / 2, cy - h / 2, w, h]})
                self.gt_mask.append({**common, "segmentation": encode_mask(mask, text=True),
                                     "area": float(mask.sum()) / ratio**2})
            self._add_predictions(image_id, pred)
            if len(self.overlays) < keep_images:
                self.overlays.append(top_mask_overlay(batch["img"][i], pred["masks"],
                                                      pred["scores"]))

    def _add_predictions(self, image_id: int, pred: dict) -> None:
        boxes = pred["boxes"].cpu().numpy()
        scores = pred["scores"].cpu().numpy()
        masks = pred["masks"].cpu().numpy()
        for box, score, mask in zip(boxes, scores, masks, strict=True):
            x0, y0, x1, y1 = box.tolist()
            self.dt_box.append({"image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "score": float(score)})
            self.dt_mask.append({"image_id": image_id, "segmentation": encode_mask(mask, text=True),
                                 "score": float(score)})

    def compute(self) -> dict[str, float]:
        """Box and mask AR@10/100 over every rank's images (all ranks get the same numbers)."""
        parts = [self.images, self.gt_box, self.gt_mask, self.dt_box, self.dt_mask]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, parts)
            parts = [sum((g[k] for g in gathered), []) for k in range(len(parts))]
        images, gt_box, gt_mask, dt_box, dt_mask = parts
        if not images:
            return {}
        cats = [{"id": 1, "name": "object"}]
        box = average_recall({"images": images, "annotations": gt_box, "categories": cats},
                             dt_box, "bbox", max_dets=(10, 100))
        mask = average_recall({"images": images, "annotations": gt_mask, "categories": cats},
                              dt_mask, "segm", max_dets=(10, 100))
        out = {f"mask_{k}": v for k, v in mask.items()} | {f"box_{k}": v for k, v in box.items()}
        out["ar_100"] = mask["ar_100"]
        out["images"] = float(len(images))
        return out

    def log_overlays(self, loggers, out_dir: Path, epoch: int) -> Path | None:
        """Save the overlays as one PNG and send them to wandb / TensorBoard loggers."""
        if not self.overlays:
            return None
        grid = np.concatenate(self.overlays, axis=1)
        path = atomic_write_image(out_dir / "overlays" / f"val_epoch{epoch:03d}.png",
                                  grid[..., ::-1])
        for logger in loggers:
            name = type(logger).__name__
            if name == "WandbLogger":
                logger.log_image(key="val/overlays", images=[grid], step=None)
            elif name == "TensorBoardLogger":
                logger.experiment.add_image("val/overlays", grid, epoch, dataformats="HWC")
        return path


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
