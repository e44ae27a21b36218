"""The segmentation loss (ultralytics' ``v8SegmentationLoss``, or 8.0.120's under that rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ultralytics.nn.tasks import SegmentationModel
from ultralytics.utils.loss import v8SegmentationLoss

from fastsam_train.ultra import v8_0
from fastsam_train.ultra.hyp import RULES

LOSS_NAMES = ("box", "seg", "cls", "dfl")  # order of ultralytics' loss vector (its 5th, sem, is 0)


def build_loss(model: SegmentationModel, rule: str = "v8_4"
               ) -> Callable[[Any, dict], tuple[torch.Tensor, dict]]:
    """ultralytics' ``v8SegmentationLoss`` for ``model`` (needs ``model.args`` as a namespace);
    ``rule="v8_0_120"``: with 8.0.120's assigner and mask-loss normalisation (``v8_0.py``).

    Returns ``loss_fn(preds, batch) -> (total, items)``: ``preds`` is the model output on
    ``batch["img"]`` (float (B, 3, H, W) in [0, 1]), ``batch`` the ``collate`` dict
    (``batch_idx``, ``cls``, ``bboxes`` normalised xywh, ``masks``; on the model's device).
    ``total`` is the scalar to backpropagate: the sum over box, seg, cls, dfl of
    (batch mean x gain), **times B** (see ``fastsam_train.ultra``). ``items`` maps ``LOSS_NAMES``
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
