"""Per-image results on disk, so an interrupted evaluation resumes where it stopped.

    log = ResultLog(run_dir / "per_image.bin", settings)   # opens (and checks) or creates
    log.image_ids                                         # images already evaluated
    for image_id, results in log.records(keep_ids): ...    # read back, one list per image
    log.append(image_id, [results_of_evaluator_0, ...])    # flushed at once

File layout: the line ``FSAMEVAL1``, then records ``<payload length u32><crc32 u32><payload>``.
The first record is the header (JSON: the settings the results depend on); each further record
is one image: its ``image_id`` and every evaluator's result, a dict of small numpy arrays
(``pack``: a JSON table of keys, dtypes and shapes, then the raw bytes). Only plain numeric
dtypes are accepted when reading: nothing in the file chooses code to run (no pickle).

A record is written with one ``write`` and flushed, so a killed process leaves at most one
partial record at the end; opening the log cuts it off (logged). Damage anywhere else, or a
header written with other settings, raises instead of silently mixing results. While open the
log holds an exclusive ``flock``: a second evaluation started on the same run folder stops with
an error instead of interleaving records.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"FSAMEVAL1\n"
FRAME = struct.Struct("<II")  # payload length, crc32
DTYPES = {np.dtype(t).str for t in ("bool", "int8", "uint8", "int16", "uint16", "int32",
                                     "uint32", "int64", "uint64", "float32", "float64")}
MAX_RECORD = 1 << 30
MAX_TORN = 4 << 20  # a torn write is one record (KBs); more than this after a bad frame: damage


class CorruptLogError(ValueError):
    """The per-image log is damaged before its last record, or is not such a log."""


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise ``{name: array}`` (numeric dtypes only) to bytes: a JSON table, then data."""
    table, blobs = [], []
    for key, value in arrays.items():
        a = np.asarray(value)  # tobytes() writes C order whatever the layout
        if a.dtype.str not in DTYPES:
            raise TypeError(f"{key}: dtype {a.dtype} cannot be stored (numeric dtypes only)")
        table.append([key, a.dtype.str, list(a.shape)])
        blobs.append(a.tobytes())
    head = json.dumps(table, separators=(",", ":")).encode()
    return b"".join([struct.pack("<I", len(head)), head, *blobs])


def unpack(payload: bytes) -> dict[str, np.ndarray]:
    """Inverse of ``pack``; raises ValueError on anything malformed. Arrays are read-only views
    of ``payload``."""
    try:
        (size,) = struct.unpack_from("<I", payload)
        table = json.loads(payload[4:4 + size])
        fields = [(str(key), str(dtype), list(shape)) for key, dtype, shape in table]
    except (struct.error, ValueError, TypeError) as err:
        raise ValueError(f"unreadable record table: {err}") from err
    offset, out = 4 + size, {}
    for key, dtype, shape in fields:
        if dtype not in DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"record field {key!r}: bad dtype {dtype!r} or shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(payload):
            raise ValueError(f"record field {key!r} runs past the record")
        out[key] = np.frombuffer(payload, dtype, count, offset).reshape(shape)
        offset += nbytes
    if offset != len(payload):
        raise ValueError("record has trailing bytes")
    return out


def _read_records(f, start: int, size: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(offset, end, payload) of each record from ``start``; payload None for a bad one
    (then iteration stops)."""
    offset = start
    f.seek(offset)
    while offset < size:
        frame = f.read(FRAME.size)
        length, crc = FRAME.unpack(frame) if len(frame) == FRAME.size else (0, 0)
        payload = f.read(length) if 0 < length <= MAX_RECORD else b""
        end = offset + FRAME.size + length
        if not payload or len(payload) != length or zlib.crc32(payload) != crc:
            yield offset, end, None
            return
        yield offset, end, payload
        offset = end


class ResultLog:
    """Append-only per-image results of one evaluation run (see the module docstring).

    path: the log file; settings: JSON-able dict that must equal the one stored in an existing
    log (task, data, model / predictions source); sync_every: ``fsync`` after this many records
    (each record is flushed to the OS at once, which survives a killed process).
    """

    def __init__(self, path: str | Path, settings: dict, sync_every: int = 64) -> None:
        self.path, self.sync_every = Path(path), sync_every
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.image_ids: set[int] = set()
        self._pending = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # created if absent, never truncated here
        self._lock()
        if self.path.stat().st_size > 0:
            try:
                self._end = self._scan()
            except Exception:
                self._file.close()
                raise
        else:
            header = json.dumps(self.settings, sort_keys=True).encode()
            self._file.write(MAGIC + FRAME.pack(len(header), zlib.crc32(header)) + header)
            self._file.flush()
            self._end = self.path.stat().st_size
        self._file.truncate(self._end)  # a torn last record goes; appends follow it

    def _lock(self) -> None:
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"{self.path} is open in another evaluation: two runs cannot "
                               "write one run folder (use another hydra.run.dir)") from None
        except OSError as err:  # a file system without locks: go on, unguarded
            log.warning("%s: cannot lock (%s); do not start two runs on this folder",
                        self.path, err)

    @staticmethod
    def logged_ids(path: str | Path) -> set[int]:
        """The image ids a log holds (read-only, no settings check: for monitoring)."""
        path, ids = Path(path), set()
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise CorruptLogError(f"{path} is not a per-image results log")
            records = _read_records(f, len(MAGIC), path.stat().st_size)
            next(records, None)
            for _, _, payload in records:
                if payload is None:
                    break
                ids.add(int(unpack(payload)["image_id"]))
        return ids

    def _scan(self) -> int:
        """Check magic and header, collect image ids; return the end of the last good record."""
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise CorruptLogError(f"{self.path} is not a per-image results log")
            records = _read_records(f, len(MAGIC), size)
            _, end, header = next(records, (0, 0, None))
            if header is None:
                raise CorruptLogError(f"{self.path}: unreadable header")
            self._check_settings(json.loads(header))
            good = end
            for offset, end, payload in records:
                if payload is None:
                    if not self._is_tail(f, offset, end, size):
                        raise CorruptLogError(f"{self.path}: damaged record at byte {offset} "
                                              f"of {size}, before the end of the file")
                    log.warning("%s: dropped a torn last record (bytes %d..%d): that image is "
                                "evaluated again", self.path, offset, size)
                    break
                self.image_ids.add(int(unpack(payload)["image_id"]))
                good = end
        return good

    @staticmethod
    def _is_tail(f, offset: int, end: int, size: int) -> bool:
        """A bad record is a torn write if it reaches the end of the file and is at most one
        record long, or if only zeros follow it (a file system that extended the file but never
        wrote the data)."""
        if end >= size and size - offset <= MAX_TORN:
            return True
        f.seek(offset)
        return not f.read(size - offset).strip(b"\0")

    def _check_settings(self, stored: dict) -> None:
        if stored != self.settings:
            keys = sorted(k for k in stored.keys() | self.settings.keys()
                          if stored.get(k) != self.settings.get(k))
            raise ValueError(
                f"{self.path} holds results of a run with other settings (differences in: "
                f"{', '.join(keys)}); resuming would mix them. Use another run folder "
                "(hydra.run.dir=...) or delete the file to start over")

    def records(self, keep: Iterable[int] | None = None) -> Iterator[tuple[int, list[dict]]]:
        """(image_id, [results of evaluator 0, 1, ...]) of the logged images (those in
        ``keep`` only, when given), in file order."""
        keep = None if keep is None else set(keep)
        with open(self.path, "rb") as f:
            records = _read_records(f, len(MAGIC), self._end)
            next(records)  # the header
            for _, _, payload in records:
                fields = unpack(payload)
                image_id = int(fields.pop("image_id"))
                if keep is None or image_id in keep:
                    yield image_id, _split(fields)

    def append(self, image_id: int, results: list[dict[str, np.ndarray]]) -> None:
        """Write one image's results (one dict per evaluator) and flush."""
        fields = {"image_id": np.int64(image_id), "results": np.int64(len(results))}
        for i, result in enumerate(results):
            fields.update({f"{i}/{key}": value for key, value in result.items()})
        payload = pack(fields)
        record = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        self._file.write(record)
        self._file.flush()
        self._end += len(record)
        self.image_ids.add(int(image_id))
        self._pending += 1
        if self._pending >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._file.fileno())
        self._pending = 0

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def _split(fields: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``{"results": n, "<i>/<name>": array}`` -> n dicts ``{name: array}``."""
    parts: list[dict] = [{} for _ in range(int(fields.pop("results")))]
    for key, value in fields.items():
        index, _, name = key.partition("/")
        parts[int(index)][name] = value
    return parts
