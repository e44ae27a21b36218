"""Dataset scores from per-image counts: ODS, OIS, AP (BSR) and R50 (structured edges).

ODS/OIS/AP follow BSR's ``collect_eval_bdry.m``; R50 follows ``edgesEvalDir.m`` (it is not in
BSR's output). BSR's "Area_PR" is what papers report as AP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .counts import ImageCounts

__all__ = [
    "BoundaryScores",
    "fmeasure",
    "max_f",
    "area_pr",
    "recall_at_50",
    "summarize",
    "write_bsr_files",
]


@dataclass(frozen=True)
class BoundaryScores:
    """Benchmark result. ``curve`` is (T, 4) ``thr R P F``; ``per_image`` is (N, 5)
    ``index bestT bestR bestP bestF`` (as BSR's eval_bdry_thr.txt / eval_bdry_img.txt)."""

    ods: float
    ods_t: float
    ods_r: float
    ods_p: float
    ois: float
    ois_r: float
    ois_p: float
    ap: float
    r50: float
    curve: np.ndarray
    per_image: np.ndarray

    def metrics(self, prefix: str = "bsds500") -> dict[str, float]:
        """Stable ``prefix/name`` metric dict: ods, ois, ap, r50 and ODS threshold/R/P."""
        names = ("ods", "ois", "ap", "r50", "ods_t", "ods_r", "ods_p", "ois_r", "ois_p")
        return {f"{prefix}/{n}": float(getattr(self, n)) for n in names}


def _ratio(cnt, total):
    """BSR's ``cnt ./ (total + (total==0))``."""
    return np.asarray(cnt, float) / (np.asarray(total, float) + (np.asarray(total) == 0))


def fmeasure(r, p):
    """BSR ``fmeasure``: ``2PR / (P + R + ((P+R)==0))``, elementwise."""
    r, p = np.asarray(r, float), np.asarray(p, float)
    return 2 * p * r / (p + r + ((p + r) == 0))


def max_f(thr: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """BSR ``maxF``: best (T, R, P, F) along the curve, linearly interpolated with 100 steps
    between consecutive thresholds. thr, r, p: (T,). Ties keep the first in BSR's scan order."""
    d = np.linspace(0, 1, 100)[None, :]
    cand = [np.array([v[0] for v in (thr, r, p)])[:, None]]
    if len(thr) > 1:
        seg = [(v[1:, None] * d + v[:-1, None] * (1 - d)).ravel() for v in (thr, r, p)]
        cand.append(np.stack(seg))
    t_all, r_all, p_all = np.concatenate(cand, axis=1)
    k = int(np.argmax(fmeasure(r_all, p_all)))
    return float(t_all[k]), float(r_all[k]), float(p_all[k]), float(fmeasure(r_all[k], p_all[k]))


def area_pr(r: np.ndarray, p: np.ndarray) -> float:
    """BSR ``Area_PR`` (the published "AP"): P interpolated at R = 0:0.01:1 over the unique
    recalls, 0 outside their range, summed x 0.01. r, p: (T,)."""
    ru, idx = np.unique(r, return_index=True)
    if len(ru) < 2:
        return 0.0
    grid = np.linspace(0, 1, 101)
    pi = np.interp(grid, ru, p[idx])
    pi[(grid < ru[0]) | (grid > ru[-1])] = 0.0
    return float(pi.sum() * 0.01)


def recall_at_50(r: np.ndarray, p: np.ndarray) -> float:
    """``edgesEvalDir`` R50: recall at precision max(min P, 0.5), linearly interpolated over
    unique recalls then unique precisions; NaN when precision never reaches 0.5."""
    _, k = np.unique(r, return_index=True)
    r, p = r[k][::-1], p[k][::-1]
    pu, o = np.unique(p, return_index=True)
    target = max(pu[0], 0.5)
    if target > pu[-1]:
        return float("nan")
    return float(np.interp(target, pu, r[o]))


def _best_index(cnt_r, sum_r, cnt_p, sum_p) -> int:
    """First threshold of maximal (uninterpolated) F of one image, BSR ``ff(1)``."""
    f = fmeasure(_ratio(cnt_r, sum_r), _ratio(cnt_p, sum_p))
    return int(np.flatnonzero(f == f.max())[0])


def summarize(images: Sequence[ImageCounts]) -> BoundaryScores:
    """Combine per-image counts into dataset scores, as ``collect_eval_bdry`` + R50."""
    if not images:
        raise ValueError("no images to summarize")
    thr = images[0].thresholds
    total = np.zeros((4, len(thr)))
    ois = np.zeros(4)
    per_image = []
    for i, c in enumerate(images, start=1):
        cnts = np.stack([c.cnt_r, c.sum_r, c.cnt_p, c.sum_p])
        total += cnts
        ois += cnts[:, _best_index(*cnts)]
        per_image.append((i, *max_f(thr, _ratio(c.cnt_r, c.sum_r), _ratio(c.cnt_p, c.sum_p))))
    r, p = _ratio(total[0], total[1]), _ratio(total[2], total[3])
    ods_t, ods_r, ods_p, ods = max_f(thr, r, p)
    ois_r, ois_p = float(_ratio(ois[0], ois[1])), float(_ratio(ois[2], ois[3]))
    return BoundaryScores(
        ods=ods,
        ods_t=ods_t,
        ods_r=ods_r,
        ods_p=ods_p,
        ois=float(fmeasure(ois_r, ois_p)),
        ois_r=ois_r,
        ois_p=ois_p,
        ap=area_pr(r, p),
        r50=recall_at_50(r, p),
        curve=np.stack([thr, r, p, fmeasure(r, p)], 1),
        per_image=np.array(per_image),
    )


def write_bsr_files(scores: BoundaryScores, out_dir: str | Path) -> None:
    """Write BSR's eval_bdry.txt, eval_bdry_thr.txt and eval_bdry_img.txt into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = scores
    row = [s.ods_t, s.ods_r, s.ods_p, s.ods, s.ois_r, s.ois_p, s.ois, s.ap]
    np.savetxt(out / "eval_bdry.txt", np.array([row]), fmt="%10g")
    np.savetxt(out / "eval_bdry_thr.txt", s.curve, fmt="%10g")
    np.savetxt(out / "eval_bdry_img.txt", s.per_image, fmt=["%10d"] + ["%10g"] * 4)
