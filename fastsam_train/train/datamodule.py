"""LightningDataModule over converted shards, local or remote (``stream.py`` has the pipeline,
``shardlist.py`` the accepted ``data.shards`` forms)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from fastsam_train import ultra
from fastsam_train.train.shardlist import is_url, resolve_split
from fastsam_train.train.stream import ShardStream, StreamConfig

log = logging.getLogger(__name__)


def ignore_requeue_signal(_worker_id: int) -> None:
    """DataLoader workers ignore SIGUSR1 and SIGTERM; the trainer process handles both.

    SLURM signals every process of a job step. A forked worker inherits the requeue handler and
    would act on a stale copy of the trainer. On SIGTERM (a requeue or scancel) a worker dying
    first makes the trainer fail with "DataLoader worker killed" while it winds down; workers
    still exit with the trainer (torch's parent watchdog) or at SLURM's SIGKILL. A worker that
    is skipping bad data stops through the datamodule's stop event instead."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochLoader(DataLoader):
    """A DataLoader that calls ``before_epoch()`` whenever an epoch's iterator is made, and
    can shut its iterators' worker processes down.

    Lightning makes the training iterator (forking the workers, which take a copy of the
    dataset) once per epoch, for the first epoch before ``on_train_epoch_start``; so the
    stream is pointed at the trainer's epoch here, at the one moment that reaches the workers.
    ``shutdown()``: when a run fails, the exception's traceback keeps the iterator (and its
    idle workers, which ignore SIGTERM) alive until the interpreter exits, where
    multiprocessing would then wait for them forever.
    """

    def __init__(self, *args, before_epoch: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self.before_epoch = before_epoch
        self.iterators: weakref.WeakSet = weakref.WeakSet()

    def __iter__(self):
        self.before_epoch()
        iterator = super().__iter__()
        self.iterators.add(iterator)
        return iterator

    def shutdown(self) -> None:
        for iterator in list(self.iterators):
            if hasattr(iterator, "_shutdown_workers"):  # torch's, as Lightning calls it
                iterator._shutdown_workers()


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders streaming ``<shards>/{train,val}`` (or webdataset URLs).

    Args:
        shards: a folder written by ``data_tools/convert.py``, an ``http(s)://`` URL of
            one, or ``{train: urls, val: urls}`` webdataset specs (``shardlist.py``).
        imgsz: training image size (square after mosaic / letterbox).
        batch_size: per device; the global batch is batch_size x devices x nodes.
        num_workers: loader processes per device.
        shuffle_buffer / mosaic_buffer: samples held per worker (bounds memory).
        max_val_images: cap per validation epoch (None: the whole val split).
        make_demo: the demo's own data: if ``shards`` is ``make_demo.shards`` and holds no
            shards yet, demo SA-1B tars are written beside it and converted into it; keys
            shards, num_tars, images_per_tar, height, width, max_side, val_fraction. Any other
            path is never built: a missing or empty one fails at once.
        auto_convert: a ``conf/convert.yaml``-shaped spec (``input``, ``output``, options) run
            when the shards are missing, and only when ``shards`` is that spec's own
            ``output`` (a mistyped or overridden folder is never filled in; it fails in setup).
        seed: shard order, sample shuffle and augmentation seeds derive from it and the epoch.
        hyp: the ultralytics hyperparameters (``conf/hyp``): augmentations, mask format and
            ``close_mosaic``; keys ultralytics does not know (grad_clip, ...) are ignored here.
        train_size / val_size: samples in URL shard lists that have no sizes.json beside them.
        max_consecutive_skips: unusable shards/samples in a row on one loader worker before the
            run stops with an error (all-bad data would otherwise be searched forever).
        max_pixels: shard images declaring more pixels are skipped (counted) before decoding.
    """

    def __init__(self, shards: str | dict, imgsz: int = 640, batch_size: int = 8,
                 num_workers: int = 2, shuffle_buffer: int = 64, mosaic_buffer: int = 16,
                 max_val_images: int | None = None, make_demo: dict | None = None,
                 auto_convert: dict | None = None, seed: int = 0, hyp: dict | None = None,
                 train_size: int | None = None, val_size: int | None = None,
                 max_consecutive_skips: int = 1000, max_pixels: int = 50_000_000):
        super().__init__()
        self.shards = _plain(shards)
        self.imgsz, self.batch_size, self.num_workers = imgsz, batch_size, num_workers
        self.shuffle_buffer, self.mosaic_buffer = shuffle_buffer, mosaic_buffer
        self.max_val_images, self.make_demo, self.seed = max_val_images, _plain(make_demo), seed
        self.auto_convert = _plain(auto_convert)
        self.hyp = augmentation_hyperparameters(_plain(hyp) or {})
        self.sizes = {"train": train_size, "val": val_size}
        self.max_consecutive_skips = max_consecutive_skips
        self.max_pixels = max_pixels
        self.train_stream: ShardStream | None = None
        self._resume_batches = 0
        self._stop = self._stop_watch = None
        self._loaders: weakref.WeakSet = weakref.WeakSet()

    def prepare_data(self) -> None:
        demo = dict(self.make_demo or {})
        target = demo.pop("shards", None)
        if self._is_missing_local(target):
            build_demo_shards(Path(target), **demo)
        spec = self.auto_convert
        if spec and self._is_missing_local(spec["output"]):
            from fastsam_train.data.convert import convert_from_config

            log.info("no shards at %s: converting %s there", self.shards, spec["input"]["type"])
            convert_from_config(spec)

    def _is_missing_local(self, target: str | None) -> bool:
        """``shards`` is the local folder ``target`` and holds no shards yet."""
        return bool(target and isinstance(self.shards, str) and not is_url(self.shards)
                    and Path(self.shards).resolve() == Path(target).resolve()
                    and not (Path(target) / "train" / "sizes.json").exists())

    def setup(self, stage: str | None = None) -> None:
        self.train_shards, self.train_total = self._resolve("train")
        self.val_shards, self.val_total = self._resolve("val")
        if self._stop is None:
            self._stop = mp.Event()
            self._watch_trainer()

    def _resolve(self, split: str) -> tuple[list[str], int]:
        try:
            return resolve_split(self.shards, split, self.sizes[split])
        except FileNotFoundError as exc:
            demo = (self.make_demo or {}).get("shards")
            hint = f"; demo data is built only at data.make_demo.shards={demo}" if demo else ""
            raise FileNotFoundError(f"{exc}{hint}") from None

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
                           mosaic_buffer=self.mosaic_buffer,
                           max_consecutive_skips=self.max_consecutive_skips,
                           max_pixels=self.max_pixels)
        self.train_stream = ShardStream(cfg, stop=self._stop)
        return self._loader(self.train_stream, before_epoch=self._start_epoch)

    def val_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        cap = self.max_val_images
        # the same number of samples on every rank (the remainder of the split is left out)
        per_rank = min(self.val_total if cap is None else cap, self.val_total) // world
        cfg = StreamConfig(self.val_shards, self.imgsz, self.hyp, train=False, seed=self.seed,
                           batches_per_rank=None, batch_size=self.batch_size,
                           max_samples=per_rank, max_consecutive_skips=self.max_consecutive_skips,
                           max_pixels=self.max_pixels)
        return self._loader(ShardStream(cfg, stop=self._stop))

    def _loader(self, stream: ShardStream, before_epoch: Callable[[], None] | None = None):
        loader = EpochLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                             collate_fn=ultra.collate, persistent_workers=False,
                             pin_memory=False, worker_init_fn=ignore_requeue_signal,
                             before_epoch=before_epoch or (lambda: None))
        self._loaders.add(loader)
        return loader

    def _start_epoch(self) -> None:
        """Point the stream at the trainer's epoch: its seeds, ultralytics' ``close_mosaic``
        (no mosaic/mixup in the last ``close_mosaic`` epochs) and a resume's skipped batches."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        last = self.trainer.max_epochs if self.trainer is not None else None
        close = self.hyp.close_mosaic
        mosaic = not (close and last is not None and last > 0 and epoch >= last - close)
        self.train_stream.configure_epoch(epoch, mosaic=mosaic, skip_batches=self._resume_batches)
        self._resume_batches = 0

    # ---- stopping ------------------------------------------------------------------------------
    def _watch_trainer(self) -> None:
        """Set the stop event when the trainer receives SIGTERM (Lightning's own flag): a loader
        worker that is skipping bad data then stops instead of finishing its run of skips,
        which the trainer, waiting for its batch, could not interrupt."""
        trainer, stop, done = self.trainer, self._stop, threading.Event()
        if trainer is None:
            return

        def watch() -> None:
            while not done.wait(0.5):
                if getattr(trainer, "received_sigterm", False):
                    stop.set()
                    return
        threading.Thread(target=watch, name="fastsam-sigterm-watch", daemon=True).start()
        self._stop_watch = done

    def _stop_workers(self) -> None:
        """Workers skipping bad data stop (the event), then every loader's workers exit."""
        if self._stop is not None:
            self._stop.set()
        if self._stop_watch is not None:
            self._stop_watch.set()
        self._stop = self._stop_watch = None
        for loader in list(self._loaders):
            loader.shutdown()

    def on_exception(self, exception: BaseException) -> None:
        self._stop_workers()

    def teardown(self, stage: str | None = None) -> None:
        self._stop_workers()

    # ---- resumption ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        done = 0
        if self.trainer is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"epoch": self.trainer.current_epoch if self.trainer else 0, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        # a mid-epoch checkpoint: the resumed epoch skips the batches already trained on
        self._resume_batches = int(state.get("batches_done", 0))


def augmentation_hyperparameters(hyp: dict):
    """``conf/hyp`` values -> ultralytics' namespace, keeping only the keys ultralytics knows
    (the module validates the full set; grad_clip and the EMA settings are the module's)."""
    known = vars(ultra.hyperparameters())
    return ultra.hyperparameters(**{k: v for k, v in hyp.items() if k in known})


def _plain(value):
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_demo_shards(root: Path, num_tars: int, images_per_tar: int, height: int, width: int,
                      max_side: int, val_fraction: float) -> None:
    """Synthetic SA-1B tars written to ``<root>/../sa1b`` (the demo's own, deterministic
    files) and exactly those converted into ``root``; other tars there are left alone."""
    from fastsam_train.data.convert import ConvertOptions, convert_dataset
    from fastsam_train.data.demo import make_demo_sa1b
    from fastsam_train.data.inputs import SA1BInput
    from fastsam_train.data.records import RecordOptions

    tars_dir = root.parent / "sa1b"
    log.info("writing demo SA-1B tars to %s and converting them into %s", tars_dir, root)
    tars = make_demo_sa1b(tars_dir, num_tars, images_per_tar, height, width, seed=0)
    opts = ConvertOptions(fraction=1.0, val_fraction=val_fraction, samples_per_shard=16,
                          record=RecordOptions(max_side=max_side))
    convert_dataset(SA1BInput([str(t) for t in tars]), root, opts, workers=1)
