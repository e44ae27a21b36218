"""The one home of binary mask <-> COCO RLE code: encode, decode, area, box, counts strings.

All encoding is pycocotools' (``pycocotools.mask``), so every RLE this project writes is the
one COCO's own tools write; the counts-string parser and the box-only decoder are our own,
vectorised and checked against pycocotools in tests. An RLE here is a dict ``{"size": [H, W],
"counts": ...}``; ``counts`` is a ``str`` where the RLE goes into JSON and ``bytes`` where it
goes straight back into pycocotools (``bytes_rles`` converts). Masks are column-major (Fortran
order) for pycocotools, as COCO requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

if TYPE_CHECKING:
    import torch

ENCODE_CHUNK = 64  # masks encoded at once: bounds the dense uint8 copy to 64 x H x W bytes
AREA_CHUNK = 255  # pycocotools' mask.area() fails on more RLEs at once with NumPy 2
MAX_RLE_CHUNKS = 8  # 5-bit chunks per count: 40 bits, far above any image's pixel count


class RLETotalError(ValueError):
    """RLE runs that are negative or do not add up to the mask's height x width."""


def as_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like -> numpy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def encode_mask(mask: np.ndarray, text: bool = False) -> dict:
    """One mask (H, W) bool/uint8 numpy -> compressed COCO RLE; ``counts`` bytes (as
    pycocotools returns it) or, with ``text``, an ASCII str (for JSON)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if text:
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_masks(masks: Any, index: Sequence[int] | None = None) -> list[dict]:
    """bool/uint8 (n, H, W) numpy or torch -> COCO RLEs (str ``counts``) of ``masks[index]``
    (all when None), encoded ``ENCODE_CHUNK`` masks at a time so no full dense copy is made."""
    index = list(range(len(masks))) if index is None else [int(i) for i in index]
    rles = []
    for start in range(0, len(index), ENCODE_CHUNK):
        chunk = as_numpy(masks[index[start:start + ENCODE_CHUNK]]).astype(np.uint8)
        rles.extend(mask_utils.encode(np.asfortranarray(chunk.transpose(1, 2, 0))))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def bytes_rles(rles: Sequence[dict]) -> list[dict]:
    """COCO RLEs with str or bytes ``counts`` -> the same with bytes ``counts`` (what
    pycocotools' ``area`` / ``toBbox`` / ``decode`` / ``iou`` accept)."""
    return [{"size": r["size"], "counts": r["counts"].encode("ascii")
             if isinstance(r["counts"], str) else r["counts"]} for r in rles]


def decode_rle(rles: Sequence[dict], hw: tuple[int, int] | None = None) -> torch.Tensor:
    """COCO RLE dicts -> bool torch (n, H, W) (``hw`` gives the shape when the list is empty)."""
    import torch  # here, not at the top: the data converters run without torch

    if not rles:
        return torch.zeros((0, *(hw or (0, 0))), dtype=torch.bool)
    return torch.from_numpy(mask_utils.decode(bytes_rles(rles))).permute(2, 0, 1).bool()


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """(n,) float64 pixel counts, ``pycocotools.mask.area`` in chunks (see AREA_CHUNK)."""
    if not len(rles):
        return np.zeros(0)
    coded = bytes_rles(rles)
    return np.concatenate([mask_utils.area(coded[i:i + AREA_CHUNK])
                           for i in range(0, len(coded), AREA_CHUNK)]).astype(np.float64)


def rle_boxes(rles: Sequence[dict]) -> np.ndarray:
    """(n, 4) float64 xywh tight boxes of COCO RLEs, ``pycocotools.mask.toBbox``."""
    if not len(rles):
        return np.zeros((0, 4))
    return mask_utils.toBbox(bytes_rles(rles)).reshape(-1, 4)


def rle_stats(rles: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(areas (n,), boxes (n, 4) xywh) exactly as pycocotools computes them."""
    if not rles:
        return np.zeros(0), np.zeros((0, 4))
    coded = bytes_rles(rles)
    return rle_areas(coded), mask_utils.toBbox(coded)


def polygons_to_rle(rings: list, height: int, width: int) -> dict:
    """COCO polygon rings (lists of x, y floats) of one object -> one compressed RLE (bytes
    ``counts``), the rings merged: what ``COCO.annToRLE`` does (``frPyObjects`` + ``merge``)."""
    return mask_utils.merge(mask_utils.frPyObjects(rings, height, width))


def compress_rle(rle: dict, height: int, width: int) -> dict:
    """Uncompressed COCO RLE (``counts`` a list of ints) -> compressed (bytes ``counts``)."""
    return mask_utils.frPyObjects(rle, height, width)


def rects_to_rles(rects_xywh: np.ndarray, height: int, width: int) -> list[dict]:
    """Filled boxes (n, 4) float64 xywh -> n compressed RLEs (pycocotools' ``frPyObjects``)."""
    return mask_utils.frPyObjects(np.asarray(rects_xywh, np.float64), height, width)


def rle_counts(counts: str | bytes) -> np.ndarray:
    """Decode COCO's compressed RLE string into run lengths (int64), vectorised.

    Same format as pycocotools' ``rleFrString``: each count is a little-endian group of 5-bit
    chunks (char - 48, bit 0x20 = more chunks follow, bit 0x10 of the last chunk = negative),
    and from the fourth count on, each is stored as a delta to the count two places earlier.
    Raises ValueError for characters outside the alphabet or a count of more than
    ``MAX_RLE_CHUNKS`` chunks (which would overflow int64).
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("RLE counts string has characters outside '0'..'o'")
    last = (c & 0x20) == 0
    group = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    pos = np.arange(c.size) - starts[group]
    if pos.max() >= MAX_RLE_CHUNKS or not last[-1]:
        raise ValueError("RLE counts string has an over-long or unfinished count")
    x = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    ends = np.flatnonzero(last)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * (pos[ends[negative]] + 1))
    x[1::2] = np.cumsum(x[1::2])  # undo the delta coding (m > 2 in the C code)
    x[2::2] = np.cumsum(x[2::2])
    return x


def rle_is_valid(rle: dict, hw: tuple[int, int]) -> bool:
    """Whether a compressed RLE decodes to exactly ``h x w`` pixels with no negative run."""
    try:
        runs = rle_counts(rle["counts"])
    except (ValueError, TypeError, UnicodeEncodeError):
        return False
    return bool(runs.size and (runs >= 0).all() and int(runs.sum()) == hw[0] * hw[1])


def rle_runs(rle: dict) -> np.ndarray:
    """Run lengths (int64) of a COCO RLE (compressed string or list of ints), checked: every
    run >= 0 and the runs sum to ``size[0] x size[1]`` (RLETotalError otherwise), so a wrong or
    hostile count can neither shift the mask nor allocate more than the image."""
    height, width = (int(v) for v in rle["size"])
    if not (height > 0 and width > 0 and height * width < 1 << 40):
        raise ValueError(f"RLE size {height}x{width} out of range")
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        runs = rle_counts(counts)
    else:
        if not isinstance(counts, list) or not all(type(v) is int for v in counts):
            raise ValueError("RLE counts must be a string or a list of integers")
        if counts and max(map(abs, counts)) > height * width:
            raise RLETotalError(f"RLE run out of range for {height}x{width}")
        runs = np.asarray(counts, np.int64)
    if runs.size and runs.min() < 0:
        raise RLETotalError("RLE has a negative run")
    # a float64 sum cannot wrap around as int64 can, and is exact below 2**53
    total = float(runs.sum(dtype=np.float64))
    if total != height * width:
        raise RLETotalError(f"RLE runs sum to {total:.0f}, not {height}x{width} = "
                            f"{height * width}")
    return runs


def decode_rle_crop(rle: dict) -> tuple[np.ndarray, int, int] | None:
    """Decode only the tight box of a COCO RLE mask: ``(crop (h, w) uint8 {0,1}, x0, y0)``.

    Work is proportional to the box, not the image (pycocotools' ``decode`` always fills the
    whole H x W frame). Returns None for an empty mask. Checked against pycocotools in tests.
    """
    height = int(rle["size"][0])
    runs = rle_runs(rle)
    ends = np.cumsum(runs)
    fg_start, fg_end = (ends - runs)[1::2], ends[1::2]
    keep = fg_end > fg_start
    fg_start, fg_end = fg_start[keep], fg_end[keep]
    if fg_start.size == 0:
        return None
    col_s, row_s = np.divmod(fg_start, height)
    col_e, row_e = np.divmod(fg_end - 1, height)
    wraps = bool((col_e != col_s).any())  # a run over a column break covers rows H-1 and 0
    x0, x1 = int(col_s[0]), int(col_e[-1]) + 1
    y0 = 0 if wraps else int(row_s.min())
    y1 = height if wraps else int(row_e.max()) + 1
    bh = y1 - y0
    # column-major index inside the box; runs stay contiguous there (see `wraps`)
    start_c = (col_s - x0) * bh + (row_s - y0)
    length = fg_end - fg_start
    lens = np.empty(2 * start_c.size + 1, dtype=np.int64)
    lens[1::2] = length
    lens[0] = start_c[0]
    lens[2:-1:2] = start_c[1:] - (start_c[:-1] + length[:-1])
    lens[-1] = (x1 - x0) * bh - (start_c[-1] + length[-1])
    values = np.zeros(lens.size, dtype=np.uint8)
    values[1::2] = 1
    crop_t = np.repeat(values, lens).reshape(x1 - x0, bh)  # (w, h): column-major storage
    return crop_t.T, x0, y0
