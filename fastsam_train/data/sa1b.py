"""Read SA-1B as Meta distributes it: ``sa_000000.tar`` ... with flat ``sa_<id>.jpg`` +
``sa_<id>.json`` pairs, or already-extracted folders of the same pairs.

Tars are streamed member by member (``tarfile`` in ``r|*`` mode); nothing is ever extracted to
disk, so a hostile member path cannot escape anywhere. Members are paired by their path without
the extension, so only a jpg and a json in the same folder of the same source pair up. A jpg
without json or a json without jpg is reported as a skip, never raised; so are a file name that
is not a valid sample key (``valid_key``: webdataset splits a key from its extension at the
first dot, so ``sa_1.v2.jpg`` could never be read back), a key seen twice in one source (it
would be written twice into one shard), and a member over ``MAX_MEMBER_BYTES``.

The unit of work is a *source*: one tar, or one chunk of an extracted folder. Sources are the
unit of parallelism, resumption and SLURM array splitting.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXT, JSON_EXT = ".jpg", ".json"
# Keys written into shards: ASCII letters, digits, '_' and '-' (SA-1B's are ``sa_<digits>``);
# no dot (webdataset's key/extension split), and short enough for a USTAR member name.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# SA-1B images and jsons are a few MB each; a member this large is refused, never read whole.
MAX_MEMBER_BYTES = 256 << 20


def valid_key(stem: str) -> bool:
    """True if ``stem`` can be a webdataset key that the training reader reads back as is."""
    return KEY_PATTERN.fullmatch(stem) is not None


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
        yield from _iter_folder(source, errors)
    else:
        yield from _iter_tar(source.path, errors)


def _skip(errors: list[tuple[str, str]], reason: str, detail: str) -> None:
    errors.append((reason, detail))
    log.warning("skipping %s: %s", reason, detail)


def _iter_folder(source: Source, errors: list[tuple[str, str]]) -> Iterator[RawPair]:
    for stem in source.stems:
        if not valid_key(stem):
            _skip(errors, "bad_key", f"{source.path}: file stem {ascii(stem)}")
            continue
        files = [source.path / f"{stem}{ext}" for ext in (IMAGE_EXT, JSON_EXT)]
        try:
            image, meta = (_read_file(f) for f in files)
        except (OSError, ValueError) as exc:
            _skip(errors, "unreadable", f"{source.path}: {stem}: {exc}")
            continue
        yield RawPair(stem, image, meta)


def _read_file(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_MEMBER_BYTES:
        raise ValueError(f"{path.name} is over {MAX_MEMBER_BYTES >> 20} MB")
    return path.read_bytes()


def _iter_tar(path: Path, errors: list[tuple[str, str]]) -> Iterator[RawPair]:
    pending: dict[str, RawPair] = {}
    try:
        stream = tarfile.open(path, mode="r|*", tarinfo=_StrictTarInfo)
    except (tarfile.TarError, OSError) as exc:
        raise SourceError("not_a_tar", f"{path}: {exc}") from exc
    with stream:
        try:
            yield from _complete_pairs(stream, path, pending, errors)
            _check_end(stream)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            errors.append(("truncated_tar", f"{path}: {exc}"))
            log.warning("tar %s ends early (%s); keeping what was read", path, exc)
    yield from pending.values()  # members whose partner never came


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile takes a header that fails its checksum or is cut short for the end of the
    archive and stops without a word, dropping every later member; here it is an error."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # a zero block: the end-of-archive marker
            raise
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(f"bad tar header at byte {tar.offset}: {exc}") from None


def _check_end(stream: tarfile.TarFile) -> None:
    """Only zeros may follow the end-of-archive block: a header zeroed by corruption would
    otherwise end the archive early, silently."""
    while chunk := stream.fileobj.read(1 << 16):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError("data after the end-of-archive marker (a zeroed header?)")


def _complete_pairs(stream: tarfile.TarFile, path: Path, pending: dict[str, RawPair],
                    errors: list[tuple[str, str]]) -> Iterator[RawPair]:
    """Complete pairs in stored order; a key already emitted is a ``duplicate_key`` skip."""
    emitted: set[str] = set()
    for member in stream:
        pair = _take_member(stream, member, pending, errors)
        if pair is None:
            continue
        if pair.stem in emitted:
            _skip(errors, "duplicate_key", f"{path}: a second {pair.stem!r} (member "
                  f"{ascii(member.name)}); the first one is kept")
            continue
        emitted.add(pair.stem)
        yield pair


def _take_member(stream: tarfile.TarFile, member: tarfile.TarInfo,
                 pending: dict[str, RawPair], errors: list[tuple[str, str]]) -> RawPair | None:
    """Read one member into ``pending``; return the pair once both halves are present.

    Halves pair by their normalised path without extension (same folder, same stem); the
    path is only a dictionary key: we never write members anywhere.
    """
    if not member.isfile():
        return None
    path = posixpath.normpath(member.name.lstrip("/"))
    where, ext = posixpath.splitext(path)
    if ext not in (IMAGE_EXT, JSON_EXT):
        return None
    stem = posixpath.basename(where)
    if not valid_key(stem):
        _skip(errors, "bad_key", f"member {ascii(member.name)}")
        return None
    if member.size > MAX_MEMBER_BYTES:
        _skip(errors, "member_too_large", f"member {ascii(member.name)}: {member.size} bytes")
        return None
    pair = pending.setdefault(where, RawPair(stem))
    if (pair.image if ext == IMAGE_EXT else pair.meta) is not None:
        _skip(errors, "duplicate_key", f"member {ascii(member.name)} appears twice")
        return None
    handle = stream.extractfile(member)
    data = handle.read() if handle is not None else b""
    if ext == IMAGE_EXT:
        pair.image = data
    else:
        pair.meta = data
    if pair.image is not None and pair.meta is not None:
        return pending.pop(where)
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
    for key in ("width", "height"):
        if type(image[key]) is not int or image[key] < 1:
            raise ValueError(f"json 'image.{key}' is not a positive integer: {image[key]!r:.40}")
    if type(image["image_id"]) not in (int, str):
        raise ValueError(f"json 'image.image_id' is not an integer or string: "
                         f"{image['image_id']!r:.40}")
    if not isinstance(image.get("file_name", ""), str):
        raise ValueError("json 'image.file_name' is not a string")
    if not isinstance(meta.get("annotations"), list):
        raise ValueError("json has no 'annotations' list")
    return meta
