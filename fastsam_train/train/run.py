"""``train(cfg)``: build the datamodule, module, callbacks, loggers and trainer; fit; export."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from fastsam_train.train.module import FastSAMModule

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Every ``_target_`` entry of a config group (callbacks, loggers), in order."""
    if not group:
        return []
    return [hydra.utils.instantiate(spec) for spec in group.values()
            if isinstance(spec, DictConfig) and "_target_" in spec]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` -> ``<output_dir>/checkpoints/last.ckpt``; a missing file is a clear error."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured experiment; returns the final logged metrics."""
    if cfg.trainer.get("accelerator") == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("FASTSAM_CPU_THREADS", "1"))))
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = FastSAMModule(model=cfg.model, hyp=cfg.hyp, init_weights=cfg.init_weights,
                           allow_pickle=cfg.allow_pickle, on_nonfinite=cfg.on_nonfinite,
                           overlay_samples=cfg.overlay_samples)
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_group(
        cfg.get("callbacks")), logger=loggers or False)
    trainer.fit(module, datamodule=datamodule,
                ckpt_path=resolve_ckpt_path(cfg.ckpt_path, output_dir))
    if cfg.export and trainer.is_global_zero and not trainer.fast_dev_run:
        path = module.export(output_dir / "weights" / "last.pt")
        log.info("exported EMA weights (ultralytics format) to %s", path)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
