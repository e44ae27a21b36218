"""LightningDataModule over the converted SA-1B shards (see ``stream.py`` for the pipeline)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from fastsam_train import ultra
from fastsam_train.train.stream import ShardStream, StreamConfig, read_split

log = logging.getLogger(__name__)


def ignore_requeue_signal(_worker_id: int) -> None:
    """DataLoader workers ignore SIGUSR1 and SIGTERM; the trainer process handles both.

    SLURM signals every process of a job step. A forked worker inherits the requeue handler and
    would act on a stale copy of the trainer. On SIGTERM (a requeue or scancel) a worker dying
    first makes the trainer fail with "DataLoader worker killed" while it winds down; workers
    still exit with the trainer (torch's parent watchdog) or at SLURM's SIGKILL."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders streaming ``<shards>/{train,val}/*.tar``.

    Args:
        shards: folder written by ``data_tools/convert.py``.
        imgsz: training image size (square after mosaic / letterbox).
        batch_size: per device; the global batch is batch_size x devices x nodes.
        num_workers: loader processes per device.
        shuffle_buffer / mosaic_buffer: samples held per worker (bounds memory).
        max_val_images: cap per validation epoch (None: the whole val split).
        make_demo: if set and ``shards`` does not exist, build demo SA-1B tars and convert
            them there; keys: num_tars, images_per_tar, height, width, max_side, val_fraction.
        auto_convert: a ``conf/convert.yaml``-shaped spec (``input``, ``output``, options) run
            when the shards are missing, and only when ``shards`` is that spec's own
            ``output`` (a mistyped or overridden folder is never filled in; it fails in setup).
        seed: shard order, sample shuffle and augmentation seeds derive from it and the epoch.
    """

    def __init__(self, shards: str, imgsz: int = 640, batch_size: int = 8, num_workers: int = 2,
                 shuffle_buffer: int = 64, mosaic_buffer: int = 16,
                 max_val_images: int | None = None, make_demo: dict | None = None,
                 auto_convert: dict | None = None, seed: int = 0):
        super().__init__()
        self.root = Path(shards)
        self.imgsz, self.batch_size, self.num_workers = imgsz, batch_size, num_workers
        self.shuffle_buffer, self.mosaic_buffer = shuffle_buffer, mosaic_buffer
        self.max_val_images, self.make_demo, self.seed = max_val_images, make_demo, seed
        self.auto_convert = auto_convert
        self.hyp = ultra.hyperparameters()
        self.train_stream: ShardStream | None = None
        self._resume_batches = 0

    def set_hyperparameters(self, hyp) -> None:
        """The module's ultralytics namespace (augmentation values come from the config)."""
        self.hyp = hyp

    def prepare_data(self) -> None:
        if self.make_demo and not (self.root / "train" / "sizes.json").exists():
            build_demo_shards(self.root, **self.make_demo)
        spec = self.auto_convert
        if spec and not (self.root / "train" / "sizes.json").exists() \
                and Path(spec["output"]).resolve() == self.root.resolve():
            from fastsam_train.data.convert import convert_from_config

            log.info("no shards at %s: converting %s there", self.root, spec["input"]["type"])
            convert_from_config(spec)

    def setup(self, stage: str | None = None) -> None:
        self.train_shards, self.train_total = read_split(self.root, "train")
        self.val_shards, self.val_total = read_split(self.root, "val")

    def batches_per_rank(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        batches = self.train_total // (world * self.batch_size)
        if batches < 1:
            raise ValueError(f"{self.train_total} training samples cannot fill one batch of "
                             f"{self.batch_size} on each of {world} ranks")
        return batches

    def train_dataloader(self) -> DataLoader:
        cfg = StreamConfig(self.train_shards, self.imgsz, self.hyp, train=True, seed=self.seed,
                           batches_per_rank=self.batches_per_rank(),
                           batch_size=self.batch_size, shuffle_buffer=self.shuffle_buffer,
                           mosaic_buffer=self.mosaic_buffer)
        self.train_stream = ShardStream(cfg)
        self.sync_epoch()
        return self._loader(self.train_stream)

    def val_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        cap = self.max_val_images
        per_rank = None if cap is None or cap >= self.val_total else -(-cap // world)
        cfg = StreamConfig(self.val_shards, self.imgsz, self.hyp, train=False, seed=self.seed,
                           batches_per_rank=None, batch_size=self.batch_size,
                           max_samples=per_rank)
        return self._loader(ShardStream(cfg))

    def _loader(self, stream: ShardStream) -> DataLoader:
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=ultra.collate, persistent_workers=False,
                          pin_memory=False, worker_init_fn=ignore_requeue_signal)

    def sync_epoch(self) -> None:
        """Point the stream at the trainer's epoch (workers are re-forked every epoch)."""
        if self.train_stream is None or self.trainer is None:
            return
        epoch = self.trainer.current_epoch
        close = self.hyp.close_mosaic
        mosaic = not (close and epoch >= self.trainer.max_epochs - close)
        self.train_stream.configure_epoch(epoch, mosaic=mosaic, skip_batches=self._resume_batches)
        self._resume_batches = 0

    def state_dict(self) -> dict:
        done = 0
        if self.trainer is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"epoch": self.trainer.current_epoch if self.trainer else 0, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        # a mid-epoch checkpoint: the resumed epoch skips the batches already trained on
        self._resume_batches = int(state.get("batches_done", 0))


def build_demo_shards(root: Path, num_tars: int, images_per_tar: int, height: int, width: int,
                      max_side: int, val_fraction: float) -> None:
    """Synthetic SA-1B tars beside ``root`` (``<root>/../sa1b``), converted into ``root``."""
    from fastsam_train.data.convert import ConvertOptions, convert_dataset
    from fastsam_train.data.demo import make_demo_sa1b
    from fastsam_train.data.inputs import SA1BInput
    from fastsam_train.data.records import RecordOptions

    tars_dir = root.parent / "sa1b"
    if not any(tars_dir.glob("sa_*.tar")):
        log.info("writing demo SA-1B tars to %s", tars_dir)
        make_demo_sa1b(tars_dir, num_tars, images_per_tar, height, width, seed=0)
    opts = ConvertOptions(fraction=1.0, val_fraction=val_fraction, samples_per_shard=16,
                          record=RecordOptions(max_side=max_side))
    convert_dataset(SA1BInput([str(tars_dir)]), root, opts, workers=1)
