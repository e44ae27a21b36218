"""Read SA-1B as Meta distributes it: ``sa_000000.tar`` ... with flat ``sa_<id>.jpg`` +
``sa_<id>.json`` pairs, or already-extracted folders of the same pairs.

Tars are streamed member by member (``tarfile`` in ``r|*`` mode); nothing is ever extracted to
disk, so a hostile member path cannot escape anywhere. Members are paired by file stem; a
stem seen twice, a jpg without json or a json without jpg is reported as a skip, never raised.

The unit of work is a *source*: one tar, or one chunk of an extracted folder. Sources are the
unit of parallelism, resumption and SLURM array splitting.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

IMAGE_EXT, JSON_EXT = ".jpg", ".json"


@dataclass(frozen=True)
class Source:
    """One unit of input: a tar, or ``files`` (stems) of an extracted folder."""

    name: str  # stable id, used to name output shards and the done-marker
    path: Path
    stems: tuple[str, ...] = ()  # folder chunks only


@dataclass
class RawPair:
    """One image's raw bytes (either may be None if missing) or a reason it is unusable."""

    stem: str
    image: bytes | None = None
    meta: bytes | None = None


class SourceError(Exception):
    """The whole source is unreadable (not a tar, unreadable file); carries a skip reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def discover_sources(inputs: list[str], folder_chunk: int) -> list[Source]:
    """Resolve input paths (tars, folders of tars, extracted folders) into sorted sources.

    Raises FileNotFoundError for a path that does not exist and ValueError if nothing usable
    is found, so a typo fails at once instead of converting zero images.
    """
    sources: list[Source] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"SA-1B input not found: {path}")
        if path.is_file():
            sources.append(Source(name=path.stem, path=path))
            continue
        tars = sorted(path.glob("*.tar"))
        sources.extend(Source(name=t.stem, path=t) for t in tars)
        stems = sorted({p.stem for p in path.iterdir() if p.suffix in (IMAGE_EXT, JSON_EXT)})
        for start in range(0, len(stems), folder_chunk):
            chunk = tuple(stems[start : start + folder_chunk])
            sources.append(Source(name=f"{path.name}-{start // folder_chunk:05d}", path=path,
                                  stems=chunk))
    if not sources:
        raise ValueError(f"no SA-1B tars or sa_*.jpg/json pairs found under {inputs}")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError("two inputs give sources with the same name; pass distinct folders")
    return sorted(sources, key=lambda s: s.name)


def iter_pairs(source: Source, errors: list[tuple[str, str]]) -> Iterator[RawPair]:
    """Yield the source's jpg/json pairs in stored order; incomplete pairs come out too.

    Problems that end the source early (truncated tar) are appended to ``errors`` as
    ``(reason, detail)``; the pairs read up to that point are still yielded.
    """
    if source.stems:
        yield from _iter_folder(source)
    else:
        yield from _iter_tar(source.path, errors)


def _iter_folder(source: Source) -> Iterator[RawPair]:
    for stem in source.stems:
        img, meta = source.path / f"{stem}{IMAGE_EXT}", source.path / f"{stem}{JSON_EXT}"
        yield RawPair(stem, img.read_bytes() if img.exists() else None,
                      meta.read_bytes() if meta.exists() else None)


def _iter_tar(path: Path, errors: list[tuple[str, str]]) -> Iterator[RawPair]:
    pending: dict[str, RawPair] = {}
    try:
        stream = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        raise SourceError("not_a_tar", f"{path}: {exc}") from exc
    with stream:
        try:
            for member in stream:
                pair = _take_member(stream, member, pending)
                if pair is not None:
                    yield pair
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            errors.append(("truncated_tar", f"{path}: {exc}"))
            log.warning("tar %s ends early (%s); keeping what was read", path, exc)
    yield from pending.values()  # members whose partner never came


def _take_member(stream: tarfile.TarFile, member: tarfile.TarInfo,
                 pending: dict[str, RawPair]) -> RawPair | None:
    """Read one member into ``pending``; return the pair once both halves are present."""
    if not member.isfile():
        return None
    name = PurePosixPath(member.name).name  # never a path: we do not write members anywhere
    stem, suffix = name.rsplit(".", 1) if "." in name else (name, "")
    if f".{suffix}" not in (IMAGE_EXT, JSON_EXT):
        return None
    handle = stream.extractfile(member)
    data = handle.read() if handle is not None else b""
    pair = pending.setdefault(stem, RawPair(stem))
    if f".{suffix}" == IMAGE_EXT:
        pair.image = data
    else:
        pair.meta = data
    if pair.image is not None and pair.meta is not None:
        return pending.pop(stem)
    return None


def parse_meta(raw: bytes) -> dict:
    """Parse and validate one SA-1B json; raises ValueError naming what is wrong."""
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed json: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("image"), dict):
        raise ValueError("json has no 'image' object")
    image = meta["image"]
    for key in ("image_id", "width", "height"):
        if key not in image:
            raise ValueError(f"json 'image' lacks '{key}'")
    if not isinstance(meta.get("annotations"), list):
        raise ValueError("json has no 'annotations' list")
    return meta
