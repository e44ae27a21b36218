"""Training/validation samples streamed from webdataset shards, in webdataset pipeline stages.

One pass of one consumer (a rank's loader worker) is a ``wds.DataPipeline`` (open_clip's chain):

    wds.SimpleShardList       shard list; training: shuffled with a seed of (seed, epoch, pass)
    split_shards(rank)        split by node
    split_shards(worker)      split by worker
    wds.tarfile_to_samples    tar -> samples; a bad tar or member is counted and logged, not fatal
    split_samples(...)        only with fewer shards than ranks (workers): every n-th sample
    wds.shuffle               training: a seeded shuffle buffer (``shuffle_buffer`` samples)
    decode_samples            JPEG + label checks (``data.labels``); bad samples counted

then ultralytics' augmentations (mosaic draws from a bounded buffer of recent samples) and the
loader's batches. Memory is bounded by the buffers, never by the dataset size.

Equal batches per rank: every rank yields exactly ``batches_per_rank`` batches per epoch
(total // (world x batch)); a consumer that runs out of shards starts another pass,
reshuffled. Shards or samples that cannot be used are skipped and counted (``skipped`` in each
sample, logged as ``data/skipped_samples``); ``max_consecutive_skips`` failures in a row on one
consumer (no usable sample between them, empty passes included) stop the run with one error
saying how many were skipped and why, instead of searching forever.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from fastsam_train import ultra
from fastsam_train.data.labels import LabelError, read_label
from fastsam_train.images import ImageReadError, decode_image

log = logging.getLogger(__name__)
MAX_PIXELS = 50_000_000  # conf/data max_pixels: converted shards hold <= 1024-px images
LOG_FIRST = 20  # bad samples logged one by one per consumer; after that every LOG_EVERY-th
LOG_EVERY = 100


class NoUsableSamples(RuntimeError):
    """Too many shards/samples in a row could not be used: the data is broken, not noisy."""


class StopRequested(RuntimeError):
    """The trainer is stopping (SIGTERM or an error) while this consumer skipped bad data."""


class BadSample(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SkipCounter:
    """One consumer's skipped shards/samples: counted by reason, logged, bounded in a row.

    Args:
        limit: failures in a row (no usable sample between) that raise NoUsableSamples.
        where: names the consumer in messages.
        stop: an event set when the trainer stops; a skip after it raises StopRequested.
    """

    def __init__(self, limit: int, where: str, stop=None):
        if limit < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {limit}")
        self.limit, self.where, self.stop = limit, where, stop
        self.total, self.in_a_row, self.reasons = 0, 0, Counter()
        # a loader worker whose trainer died (kill -9) stops skipping too
        self.parent = os.getppid() if get_worker_info() is not None else None

    def bad(self, reason: str, detail: str, count: bool = True) -> None:
        """One failure; ``count=False`` for events that are not samples (an empty pass)."""
        self.total += count
        self.in_a_row += 1
        self.reasons[reason] += 1
        if self.total <= LOG_FIRST or self.total % LOG_EVERY == 0:
            log.warning("%s: skipping (%d skipped so far): %s: %s", self.where, self.total,
                        reason, detail)
        if (self.stop is not None and self.stop.is_set()) or \
                (self.parent is not None and os.getppid() != self.parent):
            raise StopRequested(f"{self.where}: the trainer is stopping; {self.summary()}")
        if self.in_a_row >= self.limit:
            raise NoUsableSamples(
                f"{self.where}: no usable sample in the last {self.in_a_row} tries "
                f"(data.max_consecutive_skips={self.limit}); {self.summary()}. The shards "
                "cannot be read or every label is refused: check them with "
                "data_tools/render_shard.py")

    def good(self) -> None:
        self.in_a_row = 0

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"{self.total} samples skipped in total ({reasons})"

    def tar_error(self, exn: Exception) -> bool:
        """webdataset handler: count an unreadable shard/member and go on (True)."""
        if isinstance(exn, tarfile.TarError | EOFError):
            reason = "unreadable_tar"
        elif isinstance(exn, OSError):
            reason = "shard_unavailable"
        elif "duplicate file name" in str(exn):
            reason = "duplicate_member"
        else:
            reason = "tar_error"
        self.bad(reason, f"{type(exn).__name__}: {exn}"[:500])
        return True


def decode_sample(sample: dict, max_pixels: int = MAX_PIXELS
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shard sample -> (BGR image (H, W, 3), checked polygons normalised (K, 2)).

    The JPEG goes through ``fastsam_train.images`` (corrupt data is an error, images above
    ``max_pixels`` are refused from their header). Raises BadSample (missing member, unusable
    image) or LabelError (``labels.read_label``).
    """
    if "jpg" not in sample or "txt" not in sample:
        raise BadSample("missing_member", f"has {sorted(k for k in sample if k[0] != '_')}")
    try:
        image = decode_image(sample["jpg"], max_pixels, name="jpg", color="bgr")
    except ImageReadError as exc:
        raise BadSample(exc.reason, str(exc)) from exc
    try:
        text = sample["txt"].decode()
    except UnicodeDecodeError as exc:
        raise LabelError("malformed_label", "not UTF-8") from exc
    return image, read_label(text)


def decode_samples(skips: SkipCounter, max_pixels: int = MAX_PIXELS
                   ) -> Callable[[Iterator[dict]], Iterator[tuple]]:
    """Pipeline stage: samples -> (key, image, polygons); bad ones counted in ``skips``."""
    def stage(samples: Iterator[dict]) -> Iterator[tuple]:
        for sample in samples:
            try:
                image, polygons = decode_sample(sample, max_pixels)
            except (BadSample, LabelError) as exc:
                skips.bad(exc.reason, f"{sample.get('__key__')} in {sample.get('__url__')}: "
                                      f"{exc}"[:500])
                continue
            skips.good()
            yield sample["__key__"], image, polygons
    return stage


def split_shards(index: int, count: int, shards: int) -> Callable[[Iterator], Iterator]:
    """Stage: every ``count``-th shard from ``index`` (all of them if fewer than ``count``)."""
    return lambda src: itertools.islice(src, index, None, count) if shards >= count else src


def split_samples(index: int, count: int, shards: int) -> Callable[[Iterator], Iterator]:
    """Stage: every ``count``-th sample from ``index`` when there were fewer shards than
    ``count`` (every consumer then reads them all), else every sample."""
    return lambda src: src if shards >= count else itertools.islice(src, index, None, count)


@dataclass
class StreamConfig:
    shards: list[str]  # local paths or webdataset URLs
    imgsz: int
    hyp: object  # ultralytics hyperparameter namespace (augmentations, Format)
    train: bool
    seed: int
    batches_per_rank: int | None  # None: one pass over the data (validation)
    batch_size: int
    shuffle_buffer: int = 64
    mosaic_buffer: int = 16
    max_samples: int | None = None
    max_consecutive_skips: int = 1000
    max_pixels: int = MAX_PIXELS


class ShardStream(IterableDataset):
    """Iterable of transformed samples (ultralytics ``Format`` dicts) for one rank.

    ``stop``: an event (multiprocessing) the datamodule sets when the trainer stops."""

    def __init__(self, cfg: StreamConfig, stop=None):
        super().__init__()
        self.cfg, self.stop = cfg, stop
        self.epoch = 0
        self.skip_batches = 0  # set on mid-epoch resume: batches of this epoch already trained
        self.mosaic = cfg.train

    def configure_epoch(self, epoch: int, mosaic: bool = True, skip_batches: int = 0) -> None:
        """Called before each epoch's workers start (they get a copy of this object)."""
        self.epoch, self.mosaic, self.skip_batches = epoch, mosaic, skip_batches

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the loader's length is this / batch size)."""
        if self.cfg.batches_per_rank is not None:
            return self.cfg.batches_per_rank * self.cfg.batch_size
        if self.cfg.max_samples is not None:
            return self.cfg.max_samples
        raise TypeError("an uncapped validation stream has no length")  # Lightning: unsized

    def __iter__(self) -> Iterator[dict]:
        rank, world = _dist_info()
        worker, workers = _worker_info()
        quota = self._quota(worker, workers)
        if quota == 0:
            return
        _seed_everything(self.cfg.seed, self.epoch, rank, worker)
        skips = SkipCounter(self.cfg.max_consecutive_skips, f"rank {rank} loader {worker}",
                            self.stop)
        transforms, buffer = self._transforms()
        skip, produced = self._skip_count(worker, workers), 0
        for key, image, polygons in self._decoded(rank, world, worker, workers, skips):
            produced += 1
            if produced > skip:
                labels = ultra.label_dict(image, polygons, self.cfg.imgsz, im_file=key,
                                          rule=self.cfg.hyp.augment_rule)
                out = transforms(buffer.push(labels) if buffer is not None else labels)
                out["skipped"] = skips.total
                yield out
            if quota is not None and produced >= quota:
                return

    def _decoded(self, rank: int, world: int, worker: int, workers: int,
                 skips: SkipCounter) -> Iterator[tuple]:
        """Decoded samples of this consumer: one pass for validation, endless for training."""
        rng = random.Random(_mix(self.cfg.seed, self.epoch, rank, worker))
        for cycle in itertools.count():
            found = 0
            for item in self._one_pass(cycle, rank, world, worker, workers, skips, rng):
                found += 1
                yield item
            if not self.cfg.train or self.cfg.batches_per_rank is None:
                return
            if not found:
                skips.bad("empty_pass", f"pass {cycle} over {len(self.cfg.shards)} shards gave "
                          "this loader no usable sample", count=False)

    def _one_pass(self, cycle: int, rank: int, world: int, worker: int, workers: int,
                  skips: SkipCounter, rng: random.Random) -> wds.DataPipeline:
        # validation splits by sample (every consumer reads every val shard and keeps every n-th
        # sample), so each rank gets the same count whatever the shard sizes: a rank with fewer
        # validation batches would leave the others waiting in a collective
        shards = len(self.cfg.shards) if self.cfg.train else 0
        node_shards = len(range(rank, shards, world)) if shards >= world else shards
        order_seed = _mix(self.cfg.seed, self.epoch, cycle) if self.cfg.train else None
        return wds.DataPipeline(
            wds.SimpleShardList(self.cfg.shards, seed=order_seed),
            split_shards(rank, world, shards),
            split_shards(worker, workers, node_shards),
            wds.tarfile_to_samples(handler=skips.tar_error),
            split_samples(rank, world, shards),
            split_samples(worker, workers, node_shards),
            # shuffle within each pass, so a pass never mixes with the next (a restart)
            wds.shuffle(self.cfg.shuffle_buffer, self.cfg.shuffle_buffer, rng=rng)
            if self.cfg.train else None,
            decode_samples(skips, self.cfg.max_pixels),
        )

    def _transforms(self):
        if not self.cfg.train:
            return ultra.build_val_transforms(self.cfg.imgsz, self.cfg.hyp), None
        hyp = self.cfg.hyp if self.mosaic else ultra.without_mix(self.cfg.hyp)
        buffer = ultra.SampleBuffer(self.cfg.mosaic_buffer)
        return ultra.build_train_transforms(buffer, self.cfg.imgsz, hyp), buffer

    def _quota(self, worker: int, workers: int) -> int | None:
        """Samples this worker yields: its share of batches_per_rank, times the batch size."""
        if self.cfg.batches_per_rank is None:
            if self.cfg.max_samples is None:
                return None
            return len(range(worker, self.cfg.max_samples, workers))
        batches = len(range(worker, self.cfg.batches_per_rank, workers))
        return batches * self.cfg.batch_size

    def _skip_count(self, worker: int, workers: int) -> int:
        # the loader takes batch i from worker i % workers
        return len(range(worker, self.skip_batches, workers)) * self.cfg.batch_size


def _mix(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63)
    return value


def _seed_everything(seed: int, epoch: int, rank: int, worker: int) -> None:
    # ultralytics' transforms draw from the global `random` and numpy RNGs
    value = _mix(seed, epoch, rank, worker)
    random.seed(value)
    np.random.seed(value % 2**32)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker_info() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)
