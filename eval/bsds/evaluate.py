"""Evaluate a directory of PNG edge maps against BSDS ground truth, in parallel.

    counts = evaluate_dir("hed_maps/", "BSDS500/data/groundTruth/test", nthresh=99,
                          max_dist=0.0075, workers=2)
    scores = summarize(list(counts.values()))   # ODS / OIS / AP / R50

Any edge map (HED, Sobel, Canny, our model's) goes through this same pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from tqdm import tqdm

from .counts import ImageCounts, evaluate_files, write_counts
from .metrics import BoundaryScores, summarize, write_bsr_files

__all__ = ["list_pairs", "evaluate_dir", "benchmark_dir", "write_results"]


def list_pairs(
    pred_dir: str | Path, gt_dir: str | Path, ids: Sequence[str] | None = None
) -> list[tuple[str, Path, Path]]:
    """(id, prediction PNG, ground-truth .mat) for every image to evaluate, sorted by id.

    With ``ids`` None every ``gt_dir/*.mat`` needs a ``pred_dir/<id>.png`` and every PNG a
    .mat (as edgesEvalDir); otherwise only the given ids are paired. A missing counterpart
    raises FileNotFoundError naming the file that is missing.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"not a directory: {d}")
    if ids is None:
        ids = {p.stem for p in gt_dir.glob("*.mat")} | {p.stem for p in pred_dir.glob("*.png")}
    pairs = [(i, pred_dir / f"{i}.png", gt_dir / f"{i}.mat") for i in sorted(ids)]
    for _, pred, gt in pairs:
        if not gt.is_file():
            raise FileNotFoundError(f"ground truth not found: {gt} (for edge map {pred})")
        if not pred.is_file():
            raise FileNotFoundError(f"edge map not found: {pred} (for ground truth {gt})")
    if not pairs:
        raise FileNotFoundError(f"no ground truth (*.mat) in {gt_dir}")
    return pairs


def _evaluate_pair(pair, **kwargs) -> tuple[str, ImageCounts]:
    iid, pred, gt = pair
    return iid, evaluate_files(pred, gt, **kwargs)


def evaluate_dir(
    pred_dir: str | Path,
    gt_dir: str | Path,
    ids: Sequence[str] | None = None,
    *,
    nthresh: int,
    max_dist: float,
    apply_thin: bool = True,
    exact: bool = True,
    apply_nms: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, ImageCounts]:
    """Per-image counts for every pair of ``list_pairs`` (BSR's per-image ``_ev1`` files).

    nthresh / max_dist: as ``evaluate_image`` (BSR: 99, 0.0075; conf/task/bsds_edges.yaml).
    exact: exact min-cost matching (default) or the ~4x faster maximum-cardinality one.
    apply_nms: run the structured-edges NMS on raw soft maps first (see evaluate_image).
    workers: processes (None = all cores, 1 = in this process). Returns {id: ImageCounts}
    in id order; errors name the offending file.
    """
    pairs = list_pairs(pred_dir, gt_dir, ids)
    job = partial(
        _evaluate_pair,
        nthresh=nthresh,
        max_dist=max_dist,
        apply_thin=apply_thin,
        exact=exact,
        apply_nms=apply_nms,
    )
    workers = min(workers or os.cpu_count() or 1, len(pairs))
    bar = partial(tqdm, total=len(pairs), desc="BSDS boundaries", unit="img", disable=not progress)
    if workers <= 1:
        results = list(bar(map(job, pairs)))
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(bar(pool.map(job, pairs)))
    return dict(results)


def benchmark_dir(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path | None = None,
    **kwargs,
) -> BoundaryScores:
    """Evaluate a directory and summarise it; with ``out_dir`` also write BSR's files
    (``<id>_ev1.txt``, eval_bdry*.txt). kwargs go to evaluate_dir."""
    counts = evaluate_dir(pred_dir, gt_dir, **kwargs)
    scores = summarize(list(counts.values()))
    if out_dir is not None:
        write_results(out_dir, counts, scores)
    return scores


def write_results(out_dir: str | Path, counts: dict[str, ImageCounts],
                  scores: BoundaryScores) -> None:
    """BSR's output folder: ``<id>_ev1.txt`` per image and the eval_bdry*.txt summaries."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for iid, c in counts.items():
        write_counts(c, out / f"{iid}_ev1.txt")
    write_bsr_files(scores, out)
