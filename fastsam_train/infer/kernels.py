"""Compiled (numba) mask assembly for the CPU: a box's logits and its thresholded bilinear
upsampling, each one pass with no intermediate tensors.

``threshold_bilinear`` gives exactly ``geometry.sample_region(...) > 0``: the same float32
``lerp`` formula as torch's CPU kernel, columns then rows (tests compare them pixel for pixel).
Both release the GIL, so ``masks_from_prototypes`` runs them for several masks at once.
"""

from __future__ import annotations

import numba
import numpy as np

HALF, ONE = np.float32(0.5), np.float32(1.0)  # torch.lerp (float32): a + w (b - a) if w < 0.5,
# else b - (b - a)(1 - w)


@numba.njit(nogil=True, cache=True, inline="always")
def _columns(src, lo, hi, w, u, dst):  # pragma: no cover
    """One prototype row ``src`` interpolated at the pixel columns (taps ``lo``, ``hi``, weight
    ``w`` on hi, ``u`` = 1 - w) into ``dst``: torch.lerp's two forms, selected per column
    without a branch, so the loop vectorises (~3x faster than a call per element)."""
    for j in range(len(dst)):
        x, y = src[lo[j]], src[hi[j]]
        d = y - x
        dst[j] = x + w[j] * d if w[j] < HALF else y - d * u[j]


@numba.njit(nogil=True, cache=True)
def threshold_bilinear(window, r0, c0, lo_r, hi_r, frac_r, lo_c, hi_c, frac_c,
                       rows, cols, out):  # pragma: no cover
    """Bilinear sample of ``window`` float32 > 0 written into bool ``out`` (H, W) at pixel rows
    ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]``; returns the count of True pixels.

    Pixel (i, j) reads prototype rows ``lo_r[i]``, ``hi_r[i]`` (weight ``frac_r[i]`` on hi) and
    columns ``lo_c[j]``, ``hi_c[j]`` (``frac_c[j]``): the samplers of the whole image, whose
    indices are global; ``window`` holds the prototype cells from (``r0``, ``c0``) on. As in
    ``sample_region``, each prototype row is first interpolated along the columns (once), then
    each pixel between its two rows."""
    width = cols[1] - cols[0]
    lo, hi = lo_c[cols[0]:cols[1]] - c0, hi_c[cols[0]:cols[1]] - c0
    w = frac_c[cols[0]:cols[1]]
    u = ONE - w
    first, last = lo_r[rows[0]] - r0, hi_r[rows[1] - 1] - r0 + 1
    lines = np.empty((last - first, width), np.float32)
    for a in range(first, last):
        _columns(window[a], lo, hi, w, u, lines[a - first])
    count = 0
    for i in range(rows[0], rows[1]):
        top, bottom, t = lines[lo_r[i] - r0 - first], lines[hi_r[i] - r0 - first], frac_r[i]
        row, inside = out[i, cols[0]:cols[1]], 0
        if t < HALF:  # the row's weight is fixed: one branch per row, not per pixel
            for j in range(width):
                v = top[j] + t * (bottom[j] - top[j]) > 0
                row[j] = v
                inside += v
        else:
            s = ONE - t
            for j in range(width):
                v = bottom[j] - (bottom[j] - top[j]) * s > 0
                row[j] = v
                inside += v
        count += inside
    return count


@numba.njit(nogil=True, cache=True, fastmath=True)
def window_logits(coeff, protos_hwc, r0, r1, c0, c1):  # pragma: no cover
    """``coeff`` float32 (nm,) . ``protos_hwc`` float32 (hp, wp, nm) (channels last) on the
    prototype cells [r0:r1, c0:c1] only -> float32 (r1 - r0, c1 - c0): a small box's mask
    logits without the full-grid product (a dot of nm values per cell, vectorised; the
    summation order is not BLAS's, so values can differ from it in the last bits)."""
    out = np.empty((r1 - r0, c1 - c0), np.float32)
    for a in range(r0, r1):
        for b in range(c0, c1):
            acc = np.float32(0.0)
            for ch in range(coeff.shape[0]):
                acc += coeff[ch] * protos_hwc[a, b, ch]
            out[a - r0, b - c0] = acc
    return out
