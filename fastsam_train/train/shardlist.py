"""Where a split's shards are and how many samples they hold: a local folder or webdataset URLs.

``data.shards`` takes one of three forms:

* a local folder holding ``train/`` and ``val/``, each with its shards and a ``sizes.json``
  (``{shard file name: samples}``), as ``data_tools/convert.py`` writes them;
* the same layout behind HTTP: ``http(s)://host/path`` (``<url>/<split>/sizes.json`` is fetched
  and names the shards);
* a mapping ``{train: <urls>, val: <urls>}`` of webdataset shard specs: brace lists
  (``https://host/d/train/sa_{000000..000019}-000000.tar``), ``::``-joined lists, ``pipe:``
  commands (``pipe:aws s3 cp s3://bucket/d/train/sa_000000-000000.tar -``) or local paths.
  Sizes come from ``data.train_size`` / ``data.val_size`` when given, else from the
  ``sizes.json`` beside the first shard (same folder or URL folder), which must list every
  shard named; ``pipe:`` lists need the explicit sizes.

Shard names read from a ``sizes.json`` must be plain file names (no folders, no schemes): a
file can only point inside its own folder, never at another path or a command.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import webdataset as wds

SPLITS = ("train", "val")
SIZES = "sizes.json"
MAX_SIZES_BYTES = 64 << 20  # a sizes.json of a million shards is ~40 MB
_SHARD_NAME = re.compile(r"[^/\\:\x00]+\.tar")


def is_url(spec: str) -> bool:
    """A webdataset URL (``scheme://...`` or ``pipe:...``) rather than a local path."""
    return "://" in spec or spec.startswith("pipe:")


def resolve_split(shards: str | Mapping, split: str, size: int | None = None
                  ) -> tuple[list[str], int]:
    """Shard paths/URLs of ``split`` and their total sample count (see the module docstring).

    Raises FileNotFoundError (wrong or empty local folder, missing shards) or ValueError
    (malformed spec or sizes.json) with one message naming the place.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(shards, Mapping):
        if split not in shards:
            raise ValueError(f"data.shards lists no {split!r} shards (keys: {sorted(shards)})")
        return _url_list(str(shards[split]), split, size)
    shards = str(shards)
    if any(c in shards for c in "{}") or "::" in shards or shards.startswith("pipe:"):
        raise ValueError(f"data.shards={shards!r} is a shard list: give one per split, "
                         "data.shards={train: <urls>, val: <urls>}")
    if is_url(shards):
        folder = shards.rstrip("/") + "/" + split
        sizes = _read_sizes(folder + "/" + SIZES)
        urls = [folder + "/" + urllib.parse.quote(name) for name in sorted(sizes)]
    else:
        folder = Path(shards) / split
        if not (folder / SIZES).is_file():
            raise FileNotFoundError(f"no {split} shards at {folder} (expected {folder / SIZES}; "
                                    "convert a dataset with data_tools/convert.py first)")
        sizes = _read_sizes(str(folder / SIZES))
        urls = [str(folder / name) for name in sorted(sizes)]
        missing = [Path(u).name for u in urls if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / SIZES} lists {len(urls)} shards; "
                                    f"missing: {missing[:5]}")
    return urls, _total(sum(sizes.values()) if size is None else size, folder)


def _url_list(spec: str, split: str, size: int | None) -> tuple[list[str], int]:
    urls = wds.shardlists.expand_urls(spec)
    if not urls or not all(urls):
        raise ValueError(f"data.shards.{split}={spec!r} names no shards")
    if size is not None:
        return urls, _total(size, spec)
    if urls[0].startswith("pipe:"):
        raise ValueError(f"data.shards.{split} is a pipe: list; give its sample count as "
                         f"data.{split}_size")
    folders = {u.rsplit("/", 1)[0] if "/" in u else "." for u in urls}
    if len(folders) != 1:
        raise ValueError(f"data.shards.{split} spans {len(folders)} folders; give its sample "
                         f"count as data.{split}_size")
    folder = folders.pop()
    sizes = _read_sizes(folder + "/" + SIZES)
    names = [urllib.parse.unquote(u.rsplit("/", 1)[-1]) for u in urls]
    unknown = [n for n in names if n not in sizes]
    if unknown:
        raise ValueError(f"{folder}/{SIZES} does not list {unknown[:5]}; give the sample count "
                         f"as data.{split}_size")
    return urls, _total(sum(sizes[n] for n in names), spec)


def _read_sizes(where: str) -> dict[str, int]:
    """``sizes.json`` (local path or http(s) URL) -> ``{shard name: samples}``, validated."""
    try:
        if where.startswith(("http://", "https://")):
            with urllib.request.urlopen(where, timeout=60) as response:  # noqa: S310
                raw = response.read(MAX_SIZES_BYTES + 1)
        elif is_url(where) and not where.startswith("file://"):
            raise ValueError(f"cannot read {where}; give the split's size explicitly")
        else:
            with open(where.removeprefix("file://"), "rb") as handle:
                raw = handle.read(MAX_SIZES_BYTES + 1)
        if len(raw) > MAX_SIZES_BYTES:
            raise ValueError(f"larger than {MAX_SIZES_BYTES >> 20} MiB")
        sizes = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read shard sizes from {where}: {exc}") from exc
    bad = [k for k, v in (sizes.items() if isinstance(sizes, dict) else [(sizes, None)])
           if not (isinstance(k, str) and _SHARD_NAME.fullmatch(k) and k not in (".", "..")
                   and type(v) is int and v >= 0)]
    if bad:
        raise ValueError(f"{where}: entries must be '<name>.tar': samples (a plain file name "
                         f"and a count >= 0); bad: {bad[:3]}")
    return sizes


def _total(total: int, where: object) -> int:
    if type(total) is not int or total < 1:
        raise FileNotFoundError(f"no samples in the shards at {where} (total {total!r})")
    return total
