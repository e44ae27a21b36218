"""Webdataset tar shards written atomically and byte-for-byte reproducibly.

webdataset's ``TarWriter`` stamps members with the current time, so two runs never give equal
files; this writer fixes every header field, which lets a resumed conversion be checked for
equality with an uninterrupted one. A shard is written to ``<name>.tmp`` and renamed into place
only when complete, so a reader (or a rerun) never sees a partial shard under its final name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


class ShardWriter:
    """Write samples (dicts of ``ext -> bytes`` plus ``__key__``) into numbered shards.

    Shard i of prefix P is ``P-{i:06d}.tar``; ``written`` lists ``(shard name, count)``.
    """

    def __init__(self, prefix: Path, samples_per_shard: int):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.prefix, self.limit = prefix, samples_per_shard
        self.written: list[tuple[str, int]] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def write(self, sample: dict[str, bytes | str]) -> None:
        if self._tar is None:
            self._open()
        key = sample["__key__"]
        for ext in sorted(k for k in sample if k != "__key__"):
            self._tar.addfile(*_member(f"{key}.{ext}", sample[ext]))
        self._count += 1
        if self._count >= self.limit:
            self._close()

    def close(self) -> None:
        if self._tar is not None:
            self._close()

    def _open(self) -> None:
        final = self._final(len(self.written))
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _close(self) -> None:
        self._tar.close()
        with open(self._tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        final = self._final(len(self.written))
        os.replace(self._tmp, final)
        self.written.append((final.name, self._count))
        self._tar = None

    def _final(self, index: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}-{index:06d}.tar")


def iter_shard(path: Path) -> Iterator[dict[str, bytes | str]]:
    """Yield samples of one shard as ``{"__key__": key, ext: bytes, ...}`` in stored order."""
    sample: dict[str, bytes | str] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext] = tar.extractfile(member).read()
    if sample:
        yield sample
