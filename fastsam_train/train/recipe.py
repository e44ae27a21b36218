"""Departures from a reference recipe (``conf/recipe/``): the keys whose configured value differs
from the authors', one log line each, so a run that is not the paper's says so once, up front."""

from __future__ import annotations

import logging
import math

from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def configured_value(cfg: DictConfig, key: str):
    """The composed config's value at dotted ``key``; ``global_batch`` is data.batch_size x
    trainer.devices x trainer.num_nodes; ``precision`` is trainer.precision or, when a precision
    plugin sets it (trainer=gpu_sim), the plugin's. KeyError for a key the config lacks."""
    if key == "global_batch":
        return cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes
    if key == "precision":
        plugins = [p for p in cfg.trainer.get("plugins") or [] if "precision" in p]
        return plugins[0].precision if plugins else cfg.trainer.precision
    missing = object()
    value = OmegaConf.select(cfg, key, default=missing)
    if value is missing:
        raise KeyError(f"recipe key {key!r} is not in the training config")
    return value


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)


def departures(cfg: DictConfig) -> list[str]:
    """One line per ``cfg.recipe.values`` entry (key, value, source) whose configured value
    differs; [] when the config has no ``recipe``."""
    recipe = cfg.get("recipe")
    if not recipe:
        return []
    lines = []
    for entry in recipe["values"]:
        ours = configured_value(cfg, entry.key)
        if not _same(ours, entry.value):
            lines.append(f"departure from {recipe.name}: {entry.key}={ours} "
                         f"(authors: {entry.value}; {entry.source})")
    return lines


def log_departures(cfg: DictConfig) -> list[str]:
    """``departures`` logged as warnings (one line each, on global rank 0 only) and returned."""
    lines = departures(cfg)
    if rank_zero_only.rank != 0:
        return lines
    for line in lines:
        log.warning(line)
    if cfg.get("recipe") and not lines:
        log.info("training with every value of %s", cfg.recipe.name)
    return lines
