"""The one home of file writing: every file is written to a temp name beside its target and
renamed into place (``os.replace``) only when complete, so a reader, a rerun or a resumed job
never sees a partial file under its final name.

Temp names are ``.<name>.tmp<pid>`` (one per process, so two writers never share one; a killed
run's leftovers match ``.<name>.tmp*``), or ``.<name>.tmp`` where a fixed name is wanted (a
checkpoint rewritten every few hundred steps by restarted jobs must not leave one copy per
process id). Reading images is ``fastsam_train.images``' job.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np


def temp_path(path: Path, unique: bool = True) -> Path:
    """The temp name beside ``path``: ``.<name>.tmp<pid>`` (``unique``) or ``.<name>.tmp``."""
    return path.with_name(f".{path.name}.tmp{os.getpid() if unique else ''}")


@contextlib.contextmanager
def atomic_path(path: str | Path, unique: bool = True, commit: bool = True) -> Iterator[Path]:
    """Yield a temp path for a writer that wants a file name (cv2, torch, Lightning); once the
    block ends without an error the temp file is renamed to ``path`` (only if ``commit``: e.g.
    on the one rank that wrote it). On an error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, unique)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if commit:
        os.replace(tmp, path)


class AtomicFile:
    """A binary file open for writing under a temp name: ``file`` to write to, then
    ``commit()`` (flush, fsync when asked, close, rename into place) or ``discard()``."""

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(self.path)
        self.file: IO[bytes] = open(self.tmp, "wb")  # noqa: SIM115 (closed in commit/discard)

    def commit(self) -> Path:
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, fsync: bool = True) -> Iterator[IO[bytes]]:
    """``with atomic_open(path) as f: f.write(...)``: the file appears at ``path`` complete,
    or not at all (an error inside the block removes the temp file)."""
    handle = AtomicFile(path, fsync=fsync)
    try:
        yield handle.file
    except BaseException:
        handle.discard()
        raise
    handle.commit()


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temp file (+ fsync) + rename; parents are created."""
    with atomic_open(path, fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = None,
                      sort_keys: bool = False, newline: bool = False, default: Any = None,
                      fsync: bool = True) -> Path:
    """``json.dumps(obj, indent=, sort_keys=, default=)`` (+ "\\n" if ``newline``) written
    atomically; the arguments are the file's format, so callers keep theirs byte for byte."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
    return atomic_write_text(path, text + ("\n" if newline else ""), fsync=fsync)


def atomic_write_image(path: str | Path, image: np.ndarray, fsync: bool = True) -> Path:
    """Encode ``image`` (uint8 (H, W) grey or (H, W, 3) **BGR**, cv2's order) in the format of
    ``path``'s suffix with cv2 (the bytes ``cv2.imwrite`` writes) and write it atomically.
    Raises OSError when cv2 cannot encode it."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(image))
    if not ok:
        raise OSError(f"could not write {path}")
    return atomic_write_bytes(path, encoded.tobytes(), fsync=fsync)
