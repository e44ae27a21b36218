"""Conversion inputs: the small interface every dataset reader implements, and the registry.

The conversion pipeline (``convert.py``: sampling, train/val split, shards, done-markers,
resume, manifest) knows nothing about any dataset. It talks to an *input*, which

* lists its **sources** (``sources()``): the units of work, parallelism, resumption and SLURM
  array splitting (an SA-1B tar, a chunk of a COCO json's images, a chunk of a BSDS split),
  sorted by a stable name so every task of an array sees the same list;
* yields the **items** of one source (``items(source, errors)``): one future sample each, with
  its shard ``key`` and the ``group`` that sampling and the val split hash (every sample of one
  image shares it), carrying the raw image bytes and the annotations;
* turns an item into a webdataset sample (``to_sample``: ``jpg``, ``txt`` YOLO-seg label,
  ``json`` per-instance metadata), raising ``records.SkipImage`` for an unusable image and
  counting dropped annotations by reason;
* describes itself (``settings()``: every option that changes the output, guarded on resume
  and written to the manifest; ``summary()``: what the manifest should add, e.g. the category
  names and annotations dropped while indexing).

Inputs are built from the ``input`` node of ``conf/convert.yaml`` by ``build_input``:
``type`` = ``sa1b`` | ``coco`` | ``bsds``; the other keys are the input's own options.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from fastsam_train.data.records import RecordOptions, convert_record
from fastsam_train.data.sa1b import RawPair, Source, discover_sources, iter_pairs

__all__ = ["DatasetInput", "Item", "SA1BInput", "Source", "build_input", "INPUT_TYPES"]


@dataclass(frozen=True)
class Item:
    """One future sample: shard ``key`` (unique, no dots or slashes), the ``group`` that the
    sampling and validation hashes read (the image's id), and the input's own ``payload``."""

    key: str
    group: str
    payload: Any


class DatasetInput(Protocol):
    """What ``convert.convert_dataset`` needs from a dataset reader (see the module doc)."""

    kind: str

    def settings(self) -> dict: ...

    def sources(self) -> list[Source]: ...

    def items(self, source: Source, errors: list[tuple[str, str]]) -> Iterator[Item]: ...

    def to_sample(self, item: Item, opts: RecordOptions, drops: Counter) -> dict: ...

    def summary(self) -> dict: ...


class SA1BInput:
    """Meta's SA-1B: ``sa_*.tar`` files, folders of them, or extracted folders (``sa1b.py``).

    Args:
        paths: tars, folders of tars, or folders of ``sa_<id>.jpg`` + ``sa_<id>.json``.
        chunk: images per source for extracted folders.
    """

    kind = "sa1b"

    def __init__(self, paths: list[str] | str, chunk: int = 1000):
        self.paths = [paths] if isinstance(paths, str) else [str(p) for p in paths]
        self.chunk = chunk

    def settings(self) -> dict:
        return {"type": self.kind}

    def sources(self) -> list[Source]:
        return discover_sources(self.paths, self.chunk)

    def items(self, source: Source, errors: list[tuple[str, str]]) -> Iterator[Item]:
        for pair in iter_pairs(source, errors):
            yield Item(pair.stem, pair.stem, pair)

    def to_sample(self, item: Item, opts: RecordOptions, drops: Counter) -> dict:
        pair: RawPair = item.payload
        return convert_record(pair, opts, drops)

    def summary(self) -> dict:
        return {}


def _coco(**kwargs) -> DatasetInput:
    from fastsam_train.data.coco import CocoInput

    return CocoInput(**kwargs)


def _bsds(**kwargs) -> DatasetInput:
    from fastsam_train.data.bsds import BsdsInput

    return BsdsInput(**kwargs)


INPUT_TYPES = {"sa1b": SA1BInput, "coco": _coco, "bsds": _bsds}


def build_input(spec: dict, chunk: int = 1000) -> DatasetInput:
    """The input described by ``spec`` (``{"type": ..., <its options>}``, conf ``input``).

    ``chunk``: images per source (work unit) for inputs that are not tars. Unknown types and
    options raise ValueError / TypeError naming them.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in INPUT_TYPES:
        raise ValueError(f"input.type must be one of {sorted(INPUT_TYPES)}, got {kind!r}")
    try:
        return INPUT_TYPES[kind](**spec, chunk=chunk)
    except TypeError as exc:
        raise TypeError(f"input.type={kind}: {exc}") from exc
