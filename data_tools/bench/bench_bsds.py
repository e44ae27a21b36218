"""Benchmark the BSDS boundary evaluation: ours vs pyedgeeval, the full HED run, baselines.

    python data_tools/bench/bench_bsds.py compare --images 10 --workers 2   # speed + metric deltas
    python data_tools/bench/bench_bsds.py hed --workers 2 --plot hed_pr.png   # 200 HED maps
    python data_tools/bench/bench_bsds.py baselines --workers 2               # Sobel / Canny rows

Data come from ``--data`` (default: ../shared/data beside the repo). ``compare`` needs the
dev-only reference ``pip install pyedgeeval`` (a Cython port of BSR's CSA matcher).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from eval.bsds import (
    BoundaryScores,
    ImageCounts,
    benchmark_dir,
    canny_edges,
    evaluate_dir,
    list_pairs,
    load_edge_map,
    load_ground_truth,
    plot_pr_curves,
    sobel_edges,
    summarize,
    thresholds,
    to_png,
)

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# BSR's settings (nthresh 99, maxDist 0.0075) from their one home, the edge task's config
_TASK = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf/task/bsds_edges.yaml").task
BSR = {"nthresh": int(_TASK.nthresh), "max_dist": float(_TASK.max_dist)}
PUBLISHED_HED = {"ods": 0.788, "ois": 0.806, "ap": 0.809, "r50": 0.898}


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished worker processes."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds incl. worker processes) of ``fn(*args, **kwargs)``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, _cpu_seconds() - cpu


def _pyedgeeval_counts(pair, nthresh: int) -> ImageCounts:
    """One image through pyedgeeval's thinning + CSA matcher, at our thresholds."""
    from pyEdgeEval.common.binary_label.evaluate_boundaries import (
        evaluate_boundaries_threshold_multiple_gts as reference,
    )

    _, pred, gt = pair
    thr = thresholds(nthresh)
    gts = [g.astype(np.float64) for g in load_ground_truth(gt)]
    cnt_r, sum_r, cnt_p, sum_p = reference(thr, load_edge_map(pred), gts, apply_thinning=True)
    return ImageCounts(thr, cnt_r, sum_r, cnt_p, sum_p)


def _report(name: str, s: BoundaryScores, wall: float, cpu: float) -> None:
    print(
        f"{name:>12}: ODS {s.ods:.4f}  OIS {s.ois:.4f}  AP {s.ap:.4f}  R50 {s.r50:.4f}"
        f"  ({wall:.1f} s wall, {cpu:.1f} s CPU)"
    )


def _reference_dir(pairs, nthresh: int, workers: int) -> list[ImageCounts]:
    job = partial(_pyedgeeval_counts, nthresh=nthresh)
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(job, pairs), total=len(pairs), desc="pyedgeeval"))


def compare(data: Path, images: int, nthresh: int, workers: int, exact: bool) -> None:
    """Time pyedgeeval and ours on the first ``images`` HED maps with the same thresholds."""
    pred_dir, gt_dir = data / "hed_bsds500_maps", data / "bsds500" / "groundTruth" / "test"
    ids = sorted(p.stem for p in pred_dir.glob("*.png"))[:images]
    evaluate_dir(pred_dir, gt_dir, ids=ids[:1], nthresh=1, max_dist=BSR["max_dist"], workers=1,
                 progress=False)  # JIT
    ours, wall, cpu = _timed(
        evaluate_dir, pred_dir, gt_dir, ids=ids, nthresh=nthresh, max_dist=BSR["max_dist"],
        workers=workers, exact=exact,
    )
    ref, ref_wall, ref_cpu = _timed(
        _reference_dir, list_pairs(pred_dir, gt_dir, ids), nthresh, workers
    )
    s_ours, s_ref = summarize(list(ours.values())), summarize(ref)
    _report("pyedgeeval", s_ref, ref_wall, ref_cpu)
    _report("ours", s_ours, wall, cpu)
    print(
        f"speed-up: {ref_wall / wall:.1f}x wall, {ref_cpu / cpu:.1f}x CPU ({len(ids)} images, "
        f"{nthresh} thresholds, {workers} workers, exact={exact})"
    )
    for k in ("ods", "ois", "ap", "r50"):
        print(f"  d{k.upper()} (ours - pyedgeeval) = {getattr(s_ours, k) - getattr(s_ref, k):+.5f}")
    for (iid, a), b in zip(ours.items(), ref, strict=True):
        dr, dp = a.cnt_r - b.cnt_r, a.cnt_p - b.cnt_p
        print(
            f"  {iid}: cntR diff [{dr.min():+.0f}, {dr.max():+.0f}] of ~{b.sum_r.mean():.0f}, "
            f"cntP diff [{dp.min():+.0f}, {dp.max():+.0f}] of ~{b.sum_p.mean():.0f} pixels"
        )


def hed(data: Path, workers: int, exact: bool, out: Path | None, plot: Path | None) -> None:
    """Full 200-image HED evaluation; prints scores next to the published ones."""
    gt_dir = data / "bsds500" / "groundTruth" / "test"
    s, wall, cpu = _timed(
        benchmark_dir,
        data / "hed_bsds500_maps",
        gt_dir,
        out_dir=out,
        **BSR,
        workers=workers,
        exact=exact,
    )
    _report("HED (ours)", s, wall, cpu)
    print("   published: " + "  ".join(f"{k.upper()} {v:.3f}" for k, v in PUBLISHED_HED.items()))
    if plot:
        plot_pr_curves({"HED": s}, plot)


def _write_baseline(job: tuple[Path, Path, str]) -> None:
    image, out, method = job
    soft = {"sobel": sobel_edges, "canny": canny_edges}[method](cv2.imread(str(image)))
    cv2.imwrite(str(out / f"{image.stem}.png"), to_png(soft))


def baselines(data: Path, workers: int, images: int | None, plot: Path | None) -> None:
    """Sobel and Canny soft maps for the BSDS500 test images through the same benchmark."""
    jpgs = sorted((data / "bsds500" / "images" / "test").glob("*.jpg"))[:images]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("sobel", "canny"):
            out = Path(tmp) / method
            out.mkdir()
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_baseline, [(j, out, method) for j in jpgs]))
            results[method], wall, cpu = _timed(
                benchmark_dir,
                out,
                data / "bsds500" / "groundTruth" / "test",
                **BSR,
                workers=workers,
                ids=[j.stem for j in jpgs],
            )
            _report(method, results[method], wall, cpu)
    if plot:
        plot_pr_curves(results, plot)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["compare", "hed", "baselines"])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, default=None, help="subset size (compare: 10)")
    ap.add_argument("--nthresh", type=int, default=BSR["nthresh"])
    ap.add_argument("--out", type=Path, default=None, help="hed: write BSR result files here")
    ap.add_argument("--plot", type=Path, default=None, help="save a PR curve PNG")
    ap.add_argument("--fast", action="store_true", help="max-cardinality matcher, not exact")
    args = ap.parse_args()
    if args.mode == "compare":
        compare(args.data, args.images or 10, args.nthresh, args.workers, not args.fast)
    elif args.mode == "hed":
        hed(args.data, args.workers, not args.fast, args.out, args.plot)
    else:
        baselines(args.data, args.workers, args.images, args.plot)


if __name__ == "__main__":
    main()
