"""ultralytics' optimizer choice and parameter groups, LR schedule, warmup and accumulation."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.torch_utils import one_cycle

from fastsam_train.ultra.hyp import RULES


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
