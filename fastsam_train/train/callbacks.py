"""Callbacks: an atomic, frequently refreshed ``last.ckpt`` for resuming killed runs."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


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
