"""Benchmark the proposal-evaluation step at LVIS scale: plain pycocotools vs ours.

    python data_tools/bench_eval.py                      # 100 LVIS images x 1000 RLE proposals
    python data_tools/bench_eval.py --images 20 --proposals 1000 --iou-type bbox

Ground truth: the real LVIS v0.5 annotations of ``../shared/data/lvis_sample`` (100 images,
polygons; ``--annotation`` for another file). Proposals: per image, every object moved by a
few pixels (three copies), then random boxes up to ``--proposals``, random scores, as COCO RLE
(never dense masks). Each method runs in a fresh process, so times and memory are its own:

* ``pycocotools``: ``loadRes`` (area and box recomputed from every RLE) + ``COCOeval`` with
  ``useCats=0`` and ``maxDets`` [10, 100, 1000], as a user of the official API would.
* ``ours``: ``fastsam_train.metrics.recall.average_recall`` with the ``faster`` engine, given
  the area / box that the predictions already carry (``eval.core.Prediction``).
* ``ours+curve``: the full ``ProposalEvaluator`` step on the loop's ``Prediction`` objects
  (``process`` + ``evaluate``: AR@k for 12 k, OLN AUC, sizes).

Prints seconds, AR@10/100/1000 of each (they must agree), the speed-up over pycocotools (goal
>= 5x) and peak RSS: the process's peak and what the evaluation step added on top of the
loaded data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GT = REPO.parent / "shared" / "data" / "lvis_sample" / "lvis_v0.5_val_100.json"


def make_case(annotation: str, images: int, proposals: int, seed: int) -> tuple[dict, list]:
    """(ground truth of the first ``images`` images, proposals with area and bbox)."""
    from pycocotools import mask as mask_utils

    from eval.core import rle_stats
    from eval.datasets import load_gt

    gt = load_gt(annotation)
    gt["images"] = sorted(gt["images"], key=lambda im: im["id"])[:images]
    ids = {im["id"] for im in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {i: [] for i in ids}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out = []
    for image in gt["images"]:
        h, w = image["height"], image["width"]
        rles = [moved for ann in by_image[image["id"]] for moved in _moved(ann, h, w, rng)]
        n = max(proposals - len(rles), 0)
        bw, bh = rng.uniform(2, w / 2, n), rng.uniform(2, h / 2, n)
        boxes = np.c_[rng.random(n) * (w - bw), rng.random(n) * (h - bh), bw, bh]
        rles = (rles + list(mask_utils.frPyObjects(boxes, h, w)))[:proposals]
        rles = [{"size": [h, w], "counts": r["counts"].decode()} for r in rles]
        areas, bboxes = rle_stats(rles)
        out += [{"image_id": image["id"], "score": float(s), "segmentation": r,
                 "area": float(a), "bbox": b.tolist()}
                for r, s, a, b in zip(rles, rng.random(len(rles)), areas, bboxes, strict=True)]
    return gt, out


def _moved(ann: dict, h: int, w: int, rng) -> list[dict]:
    from pycocotools import mask as mask_utils

    if not isinstance(ann["segmentation"], list):
        return []
    copies = []
    for _ in range(3):
        dx, dy = rng.integers(-8, 9, 2)
        polys = [(np.asarray(p, float).reshape(-1, 2) + [dx, dy]).ravel().tolist()
                 for p in ann["segmentation"]]
        copies.append(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
    return copies


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_method(method: str, annotation: str, images: int, proposals: int, seed: int,
               iou_type: str) -> dict:
    """In a fresh process: build the case (untimed), then time the evaluation step."""
    sys.path.insert(0, str(REPO))
    gt, props = make_case(annotation, images, proposals, seed)
    if iou_type == "bbox":
        props = [{"image_id": p["image_id"], "score": p["score"], "bbox": p["bbox"]}
                 for p in props]
    import pycocotools.cocoeval  # noqa: F401  (imports are not part of the timed step)

    import eval.proposals  # noqa: F401
    from fastsam_train.metrics.recall import average_recall

    preds = _predictions(gt, props) if method == "ours+curve" else None
    base = _rss_now()
    t0 = time.perf_counter()
    if method == "pycocotools":
        ar = _plain_pycocotools(gt, props, iou_type)
    elif method == "ours":
        ar = average_recall(gt, props, iou_type, (10, 100, 1000), engine="faster")
    else:
        ar = _evaluator(gt, preds, iou_type)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "seconds": seconds, "ar": [ar[f"ar_{k}"] for k in (10, 100, 1000)],
            "peak_rss": peak, "step_rss": max(peak - base, 0), "proposals": len(props)}


def _plain_pycocotools(gt: dict, props: list[dict], iou_type: str) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat = gt["categories"][0]["id"]
    results = [{k: v for k, v in p.items() if k not in ("area", "bbox") or iou_type == "bbox"}
               | {"category_id": cat} for p in props]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = [10, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"ar_10": ev.stats[6], "ar_100": ev.stats[7], "ar_1000": ev.stats[8]}


def _predictions(gt: dict, props: list[dict]) -> list[tuple[dict, object]]:
    """The proposals as the loop hands them to evaluators: (record, Prediction) per image."""
    from eval.core import Prediction

    records = {im["id"]: im for im in gt["images"]}
    by_image: dict[int, list] = {i: [] for i in records}
    for p in props:
        by_image[p["image_id"]].append(p)
    out = []
    for iid, rows in by_image.items():
        rows.sort(key=lambda p: -p["score"])
        boxes = np.array([p["bbox"] for p in rows]).reshape(-1, 4)
        out.append((records[iid], Prediction(
            iid, records[iid]["height"], records[iid]["width"],
            [p.get("segmentation") for p in rows], np.array([p.get("area", 0.0) for p in rows]),
            boxes, np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]],
            np.array([p["score"] for p in rows]))))
    return out


def _evaluator(gt: dict, preds: list, iou_type: str) -> dict:
    """ProposalEvaluator reset + process + evaluate (one IoU type)."""
    from eval.proposals import ProposalEvaluator

    ev = ProposalEvaluator(gt, iou_types=[iou_type], box_source="mask")
    ev.reset()
    for record, pred in preds:
        ev.process([record], [pred])
    prefix = "mask" if iou_type == "segm" else "box"
    m = ev.evaluate()
    return {f"ar_{k}": m[f"{prefix}/ar_{k}"] for k in (10, 100, 1000)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotation", default=str(DEFAULT_GT))
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--proposals", type=int, default=1000)
    ap.add_argument("--iou-type", choices=("segm", "bbox"), default="segm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="pycocotools,ours,ours+curve")
    args = ap.parse_args(argv)
    if not Path(args.annotation).is_file():
        sys.exit(f"annotation file not found: {args.annotation} (pass --annotation)")
    rows = []
    for method in args.methods.split(","):
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows.append(pool.submit(run_method, method, args.annotation, args.images,
                                    args.proposals, args.seed, args.iou_type).result())
        r = rows[-1]
        print(f"{method:>12}: {r['seconds']:7.2f} s  AR@10/100/1000 "
              f"{' / '.join(f'{a:.4f}' for a in r['ar'])}  peak RSS {r['peak_rss'] / 2**20:6.0f} "
              f"MiB (+{r['step_rss'] / 2**20:.0f} MiB in the step)", flush=True)
    base = next((r for r in rows if r["method"] == "pycocotools"), None)
    print(f"\n{args.images} images x {args.proposals} proposals ({rows[0]['proposals']} total), "
          f"iou_type={args.iou_type}")
    for r in rows:
        if base and r is not base:
            same = np.allclose(r["ar"], base["ar"], rtol=0, atol=1e-12)
            print(f"{r['method']}: {base['seconds'] / r['seconds']:.1f}x faster than "
                  f"pycocotools (goal >= 5x); AR identical: {same}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
