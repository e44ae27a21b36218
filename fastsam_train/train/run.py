"""``train(cfg)``: build the datamodule, module, callbacks, loggers and trainer; fit; export."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from fastsam_train import io
from fastsam_train.train.module import FastSAMModule
from fastsam_train.train.recipe import log_departures

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Every ``_target_`` entry of a config group (callbacks, loggers), in order."""
    if not group:
        return []
    return [hydra.utils.instantiate(spec) for spec in group.values()
            if isinstance(spec, DictConfig) and "_target_" in spec]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` -> ``<output_dir>/checkpoints/last.ckpt``; a missing file is a clear error.
    A requeued SLURM job resumes from its newest ``hpc_ckpt_N.ckpt`` (callbacks.SlurmRequeue)
    whatever ``ckpt_path`` says: that is where the run stopped."""
    if SLURMEnvironment.detect() and any(output_dir.glob("hpc_ckpt_*.ckpt")):
        log.info("SLURM restart %s: resuming from the newest hpc_ckpt_N.ckpt in %s",
                 os.environ.get("SLURM_RESTART_COUNT", "?"), output_dir)
        return "hpc"
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return str(path)


def describe_cluster(trainer: L.Trainer) -> str:
    """Where this process sits: cluster environment class and the ranks it reports."""
    # a single-device strategy has no cluster_environment; the connector always has one
    env = getattr(trainer.strategy, "cluster_environment", None) or \
        trainer._accelerator_connector.cluster_environment
    job = os.environ.get("SLURM_JOB_ID")
    slurm = f" (SLURM job {job}, restart {os.environ.get('SLURM_RESTART_COUNT', '0')})" \
        if job else ""
    return (f"{type(env).__name__}{slurm}: global rank {env.global_rank()} of "
            f"{env.world_size()}, local rank {env.local_rank()}, node rank {env.node_rank()}")


def write_summary(path: Path, trainer: L.Trainer, module: L.LightningModule,
                  metrics: dict[str, float]) -> Path:
    """``metrics.json``: the final logged ``metrics``, step, epoch and size of a finished run
    (what ``data_tools/collect_sweep.py`` tabulates), written atomically."""
    summary = {"metrics": metrics,
               "global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
               "parameters": int(sum(p.numel() for p in module.model.parameters())),
               "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
               "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}
    return io.atomic_write_json(path, summary, indent=2)


def save_initial_weights(module: FastSAMModule, path: Path) -> Path:
    """The model as built, before any step, as a weights-only file (the "untrained" row of an
    evaluation); kept when it exists, so a resumed run keeps the run's own initial weights."""
    from fastsam_train.infer.weights import Weights, save_weights

    if not path.is_file():
        save_weights(Weights(dict(module.hparams["model"]), module.model.state_dict(),
                             "initial"), path)
    return path


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured experiment; returns the final logged metrics."""
    if cfg.trainer.get("accelerator") == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("FASTSAM_CPU_THREADS", "1"))))
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # INFO per COCOeval call
    L.seed_everything(cfg.seed, workers=True)
    log_departures(cfg)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = FastSAMModule(model=cfg.model, hyp=cfg.hyp, init_weights=cfg.init_weights,
                           allow_pickle=cfg.allow_pickle, on_nonfinite=cfg.on_nonfinite,
                           overlay_samples=cfg.overlay_samples, init_strict=cfg.init_strict,
                           val_nms=cfg.val_nms)
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_group(
        cfg.get("callbacks")), logger=loggers or False)
    log.info("cluster: %s", describe_cluster(trainer))
    final = cfg.get("final_eval")
    if final and final.get("untrained") and trainer.is_global_zero:
        save_initial_weights(module, output_dir / "weights" / "untrained.pt")
    trainer.fit(module, datamodule=datamodule,
                ckpt_path=resolve_ckpt_path(cfg.ckpt_path, output_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if any(getattr(cb, "preempted", False) for cb in trainer.callbacks):
        log.info("stopped for preemption; the requeued job resumes from the hpc checkpoint")
    elif trainer.is_global_zero and not trainer.fast_dev_run:
        write_summary(output_dir / "metrics.json", trainer, module, metrics)
        if cfg.export:
            path = module.export(output_dir / "weights" / "last.pt")
            log.info("exported EMA weights (ultralytics format) to %s", path)
    return metrics
