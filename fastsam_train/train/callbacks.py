"""Callbacks: an atomic, frequently refreshed ``last.ckpt`` for resuming killed runs, and
checkpoint-and-requeue on SLURM's pre-timeout signal."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

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
        final = self.dirpath / "last.ckpt"
        tmp = self.dirpath / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # collective; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, final)
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
