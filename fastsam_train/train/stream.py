"""Streaming training/validation samples from the converted webdataset shards.

The chain (open_clip's, in small stages): shard list -> seeded shuffle per epoch -> split by
rank -> split by worker -> decode (bad samples skipped and counted) -> sample shuffle buffer ->
ultralytics' augmentations (mosaic draws from a bounded buffer of recent samples) -> loader
batches. Memory is bounded by the buffers, never by the dataset size.

Equal batches per rank: every rank yields exactly ``batches_per_rank`` batches per epoch
(``sizes.json`` total // (world x batch)); a consumer that runs out of shards starts over on
them, reshuffled. With fewer shards than consumers (ranks x workers), every consumer reads all
of its rank's shards and keeps every n-th sample instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fastsam_train import ultra
from fastsam_train.data.render import parse_label
from fastsam_train.data.shards import iter_shard

log = logging.getLogger(__name__)


def read_split(root: Path, split: str) -> tuple[list[Path], int]:
    """Shard paths and total sample count of ``root/split`` from its ``sizes.json``.

    Raises FileNotFoundError with one clear message for a wrong path or an empty split.
    """
    folder = Path(root) / split
    sizes_path = folder / "sizes.json"
    if not sizes_path.is_file():
        raise FileNotFoundError(f"no {split} shards at {folder} (expected {sizes_path}; convert "
                                "SA-1B with data_tools/convert_sa1b.py first)")
    sizes = json.loads(sizes_path.read_text())
    shards = [folder / name for name in sorted(sizes)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing or not shards:
        raise FileNotFoundError(f"{sizes_path} lists {len(shards)} shards; missing: "
                                f"{missing[:5] or 'all (sizes.json is empty)'}")
    return shards, sum(sizes.values())


def decode_sample(sample: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shard sample -> (BGR image (H, W, 3), polygons normalised (K, 2)); ValueError if bad."""
    if "jpg" not in sample or "txt" not in sample:
        raise ValueError(f"sample {sample.get('__key__')} lacks jpg or txt")
    image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"sample {sample['__key__']}: undecodable jpg")
    polygons = parse_label(sample["txt"].decode(), (1, 1))
    if any(p.size < 6 or not np.isfinite(p).all() for p in polygons):
        raise ValueError(f"sample {sample['__key__']}: malformed label")
    return image, polygons


@dataclass
class StreamConfig:
    shards: list[Path]
    imgsz: int
    hyp: object  # ultralytics hyperparameter namespace
    train: bool
    seed: int
    batches_per_rank: int | None  # None: one pass over the data (validation)
    batch_size: int
    shuffle_buffer: int = 64
    mosaic_buffer: int = 16
    max_samples: int | None = None


class ShardStream(IterableDataset):
    """Iterable of transformed samples (ultralytics ``Format`` dicts) for one rank."""

    def __init__(self, cfg: StreamConfig):
        super().__init__()
        self.cfg = cfg
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
        _seed_everything(self.cfg.seed, self.epoch, rank, worker)
        quota = self._quota(worker, workers)
        transforms, buffer = self._transforms()
        rng = random.Random(_mix(self.cfg.seed, self.epoch, rank, worker))
        # shuffle within each pass, so a pass never mixes with the next (a restart)
        samples = itertools.chain.from_iterable(
            _shuffled(one, self.cfg.shuffle_buffer, rng) if self.cfg.train else one
            for one in self._passes(rank, world, worker, workers))
        produced, skipped = 0, 0
        skip = self._skip_count(worker, workers)
        for key, raw in samples:
            if quota is not None and produced >= quota:
                return
            try:
                image, polygons = decode_sample(raw)
            except ValueError as exc:
                skipped += 1
                log.warning("skipping bad sample (%d so far): %s", skipped, exc)
                continue
            produced += 1
            if produced <= skip:
                continue
            labels = ultra.label_dict(image, polygons, self.cfg.imgsz, im_file=key,
                                      rule=getattr(self.cfg.hyp, "augment_rule", "v8_4"))
            out = transforms(buffer.push(labels) if buffer is not None else labels)
            out["skipped"] = skipped
            yield out

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

    def _passes(self, rank: int, world: int, worker: int,
                workers: int) -> Iterator[Iterator[tuple[str, dict]]]:
        """This consumer's passes over the data: one for validation, endless for training."""
        cycle = 0
        while True:
            yield self._one_pass(cycle, rank * workers + worker, world * workers)
            if not self.cfg.train or self.cfg.batches_per_rank is None:
                return
            cycle += 1

    def _one_pass(self, cycle: int, consumer: int, consumers: int
                  ) -> Iterator[tuple[str, dict]]:
        order = list(self.cfg.shards)
        if self.cfg.train:
            random.Random(_mix(self.cfg.seed, self.epoch, cycle)).shuffle(order)
        if len(order) >= consumers:
            mine, stride, offset = order[consumer::consumers], 1, 0
        else:  # fewer shards than consumers: split by sample instead
            mine, stride, offset = order, consumers, consumer
        index = 0
        for shard in mine:
            for sample in _iter_shard_safe(shard):
                if index % stride == offset:
                    yield sample["__key__"], sample
                index += 1


def _iter_shard_safe(path: Path) -> Iterator[dict]:
    try:
        yield from iter_shard(path)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        log.warning("shard %s unreadable from some point on: %s", path, exc)


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


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
