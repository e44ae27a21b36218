"""Callbacks: an atomic, frequently refreshed ``last.ckpt`` for resuming killed runs,
checkpoint-and-requeue on SLURM's pre-timeout signal, and PreciseBN before validation."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from fastsam_train import io

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """Write ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` batches and at epoch end.

    Written to a temp file and renamed, so a run killed mid-write keeps the previous
    ``last.ckpt`` intact (Lightning's own ModelCheckpoint writes in place).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 50):
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.dirpath, self.every = Path(dirpath), every_n_train_steps

    def save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        # a fixed temp name (not per pid): requeued jobs must not leave one copy each
        with io.atomic_path(self.dirpath / "last.ckpt", unique=False,
                            commit=trainer.is_global_zero) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)  # collective; rank 0 writes
        trainer.strategy.barrier("last_checkpoint")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.every == 0 and batch_idx + 1 < trainer.num_training_batches:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)


class SlurmRequeue(L.Callback):
    """On SLURM's pre-timeout signal (``#SBATCH --signal=USR1@90``; submitit's USR2 in a sweep
    job): finish the current batch, save ``<default_root_dir>/hpc_ckpt_N.ckpt``, ``scontrol
    requeue`` the job and stop.

    The requeued job keeps its id, so it gets the same run folder, and Lightning resumes from
    the newest ``hpc_ckpt_N.ckpt`` there (``ckpt_path=None`` on SLURM): the step count goes on.
    Lightning's own handler saves inside the signal handler, mid-step, so a resumed run can
    lose or repeat part of a step; here the save waits for a batch boundary (the epoch end for
    the last batch), the same points ``LastCheckpoint`` saves at, whose resume is exact. Under
    DDP every rank gets the signal; the decision is reduced across ranks so all stop together.
    Installed only when running under SLURM (replacing submitit's handler, which requeues
    without a checkpoint); Lightning then leaves the signal to us. DataLoader workers ignore it
    (``datamodule.ignore_requeue_signal``): SLURM signals every process of the step.
    """

    def __init__(self, signum: str = "auto", requeue: bool = True):
        self.signum, self.requeue = self.resolve_signal(signum), requeue
        self.requested = self.preempted = False
        self._previous = None

    @staticmethod
    def resolve_signal(name: str) -> signal.Signals:
        """``auto``: submitit's pre-timeout signal inside a submitit job (hydra/launcher=slurm;
        USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise), else SIGUSR1 (slurm/*.sbatch)."""
        if name == "auto":
            name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2") \
                if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else "SIGUSR1"
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]

    def _handle(self, signum, frame) -> None:
        self.requested = True  # acted on at the next batch boundary

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and SLURMEnvironment.detect():
            self._previous = signal.signal(self.signum, self._handle)
            log.info("SLURM: %s saves hpc_ckpt_N.ckpt at the next batch and requeues the job",
                     self.signum.name)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _act(self, trainer) -> None:
        if self.preempted or not trainer.strategy.reduce_boolean_decision(self.requested,
                                                                         all=False):
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        self.preempted, trainer.should_stop = True, True
        log.info("preempted at step %d: saved %s", trainer.global_step, path)
        if self.requeue and trainer.is_global_zero:
            job = os.environ.get("SLURM_JOB_ID", "")
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode:
                log.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
            else:
                log.info("requeued SLURM job %s", job)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            self._act(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._act(trainer)


def recompute_bn_stats(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running mean / variance by the plain average of its batch
    statistics over ``batches`` (float images (B, 3, H, W) in [0, 1]) with the current weights,
    as ``momentum=None`` does; weights untouched, mode and momenta restored. Returns the number
    of batches seen (0 leaves the statistics unchanged)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {m: (m.momentum, m.running_mean.clone(), m.running_var.clone(),
                 m.num_batches_tracked.clone()) for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average of the batch statistics
    was_training, seen = model.training, 0
    model.train()
    with torch.no_grad():
        for images in batches:
            model(images)
            seen += 1
    model.train(was_training)
    for m, (momentum, mean, var, tracked) in saved.items():
        m.momentum = momentum
        if not seen:  # nothing measured: keep what was there
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
    return seen


class PreciseBN(L.Callback):
    """Recompute the BatchNorm statistics of the model that is validated and exported (the
    EMA) from ``batches`` training batches before every validation (detectron2's PreciseBN;
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

    Running averages (ultralytics' BN momentum 0.03) lag the weights when these move fast, as
    in short from-scratch training: on bsds_mini after 3 epochs the eval-mode mask loss was 195
    against 4.9 with batch statistics, and 4.9 again after recomputing on 8 batches. The images
    are training images without augmentation (letterboxed, as at inference). Each rank
    recomputes on its own shards. Off unless an experiment adds it (conf/experiment/bsds_mini).
    """

    def __init__(self, batches: int = 8):
        if batches < 1:
            raise ValueError(f"PreciseBN batches must be >= 1, got {batches}")
        self.batches = batches

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        model = pl_module.ema.ema if pl_module.ema is not None else pl_module.model
        seen = recompute_bn_stats(model, self._images(trainer, pl_module))
        log.info("PreciseBN: BatchNorm statistics recomputed on %d batches", seen)

    def _images(self, trainer, pl_module) -> Iterator[torch.Tensor]:
        from fastsam_train import ultra
        from fastsam_train.train.stream import ShardStream, StreamConfig

        dm = trainer.datamodule
        stream = ShardStream(StreamConfig(dm.train_shards, dm.imgsz, pl_module.hyp, train=False,
                                          seed=dm.seed, batches_per_rank=None,
                                          batch_size=dm.batch_size,
                                          max_samples=self.batches * dm.batch_size))
        loader = torch.utils.data.DataLoader(stream, batch_size=dm.batch_size, num_workers=0,
                                             collate_fn=ultra.collate)
        for batch in loader:
            yield batch["img"].to(pl_module.device).float() / 255
