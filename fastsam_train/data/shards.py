"""Webdataset tar shards, written atomically and byte-for-byte reproducibly.

Shards are written with webdataset's ``TarWriter`` with every header field fixed (mtime 0, no
owner names, mode 0444), so equal input gives equal bytes whatever the time or user, which
lets a resumed conversion be checked for equality with an uninterrupted one. A shard is written
to ``.<name>.tmp<pid>`` and renamed into place only when complete, so a reader (or a rerun)
never sees a partial shard under its final name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import webdataset as wds

from fastsam_train import io


def atomic_write_json(path: Path, obj: object) -> None:
    """The converter's json files (markers, sizes, manifest): indent 1, sorted keys, a final
    newline, written atomically (``fastsam_train.io``)."""
    io.atomic_write_json(path, obj, indent=1, sort_keys=True, newline=True)


class ShardWriter:
    """Write samples (dicts of ``ext -> bytes`` plus ``__key__``) into numbered shards.

    Shard i of prefix P is ``P-{i:06d}.tar``; ``written`` lists ``(shard name, count)``. Each
    shard is webdataset's ``TarWriter`` on a temp file, renamed into place once complete.
    """

    def __init__(self, prefix: Path, samples_per_shard: int):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.prefix, self.limit = prefix, samples_per_shard
        self.written: list[tuple[str, int]] = []
        self._tar: wds.TarWriter | None = None
        self._file: io.AtomicFile | None = None
        self._count = 0

    def write(self, sample: dict[str, bytes | str]) -> None:
        if self._tar is None:
            self._open()
        self._tar.write(sample)
        self._count += 1
        if self._count >= self.limit:
            self._close()

    def close(self) -> None:
        if self._tar is not None:
            self._close()

    def _open(self) -> None:
        self._file = io.AtomicFile(self._final(len(self.written)))
        # every header field fixed (time, owner, mode): equal input gives equal bytes
        self._tar = wds.TarWriter(self._file.file, user="", group="", mode=0o444, mtime=0,
                                  encoder=False)
        self._count = 0

    def _close(self) -> None:
        self._tar.close()  # ends the archive; the file is ours to sync and close
        final = self._file.commit()
        self.written.append((final.name, self._count))
        self._tar = self._file = None

    def _final(self, index: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}-{index:06d}.tar")


def iter_shard(path: Path | str) -> Iterator[dict[str, bytes | str]]:
    """Yield samples of one shard (a path or webdataset URL) as ``{"__key__": key, ext: bytes,
    ...}`` in stored order, read by webdataset's tar stages; errors are raised."""
    for sample in wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()):
        yield {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
