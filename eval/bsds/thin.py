"""Morphological thinning with MATLAB ``bwmorph(bw, 'thin', Inf)`` semantics.

MATLAB implements 'thin' as the two-subiteration algorithm of Lam, Lee & Suen (1992, p. 879),
applied in parallel over the image and repeated until nothing changes. We build the same two
256-entry lookup tables over the 8-neighbourhood and apply them in numba, visiting only the
remaining foreground pixels.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["thin"]

# Neighbour bits x1..x8 run counter-clockwise from east (north = row - 1), as in the paper.


def _deletable(code: int, first: bool) -> bool:
    """Lam-Lee-Suen conditions G1, G2 and G3 (first) or G3' (second) for a neighbour code."""
    x = [(code >> i) & 1 for i in range(8)]
    x = x + x[:1]  # x[8] is x1 again
    crossing = sum(1 for i in (0, 2, 4, 6) if not x[i] and (x[i + 1] or x[i + 2]))
    n1 = sum(x[i] | x[i + 1] for i in (0, 2, 4, 6))
    n2 = sum(x[i + 1] | x[i + 2] for i in (0, 2, 4, 6))
    if crossing != 1 or not 2 <= min(n1, n2) <= 3:
        return False
    if first:
        return ((x[1] | x[2] | (1 - x[7])) & x[0]) == 0
    return ((x[5] | x[6] | (1 - x[3])) & x[4]) == 0


_LUTS = tuple(np.array([_deletable(c, first) for c in range(256)]) for first in (True, False))


@numba.njit(cache=True)
def _thin_pass(out, ys, xs, n, lut):
    """One parallel subiteration over the n candidate pixels (ys, xs) of padded ``out``:
    delete those whose neighbour code ``lut`` marks; compact the survivors. Returns
    (number of survivors, whether anything was deleted)."""
    codes = np.zeros(n, np.int64)
    for i in range(n):
        y, x = ys[i], xs[i]
        codes[i] = (
            out[y, x + 1]
            | out[y - 1, x + 1] << 1
            | out[y - 1, x] << 2
            | out[y - 1, x - 1] << 3
            | out[y, x - 1] << 4
            | out[y + 1, x - 1] << 5
            | out[y + 1, x] << 6
            | out[y + 1, x + 1] << 7
        )
    kept = 0
    for i in range(n):
        if lut[codes[i]]:
            out[ys[i], xs[i]] = 0
        else:
            ys[kept], xs[kept] = ys[i], xs[i]
            kept += 1
    return kept, kept < n


@numba.njit(cache=True)
def _thin(out, lut1, lut2, max_iter):
    ys, xs = np.nonzero(out)
    n = ys.shape[0]
    it = 0
    while max_iter < 0 or it < max_iter:
        n, changed1 = _thin_pass(out, ys, xs, n, lut1)
        n, changed2 = _thin_pass(out, ys, xs, n, lut2)
        if not (changed1 or changed2):
            break
        it += 1


def thin(bw: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Thin a binary map to 1-pixel-wide curves: ``bwmorph(bw, 'thin', Inf)``.

    bw: (H, W) array, nonzero = foreground. Returns bool (H, W). ``max_iter`` bounds the
    number of full iterations (both subiterations); None runs until convergence.
    """
    out = np.pad(np.asarray(bw, dtype=bool), 1).astype(np.int64)  # zero border = outside
    _thin(out, _LUTS[0], _LUTS[1], -1 if max_iter is None else max_iter)
    return out[1:-1, 1:-1].astype(bool)
