"""Benchmark the proposal evaluation at scale: streaming (ours) vs the previous in-memory path vs
plain pycocotools, peak memory and time, with projections for LVIS v1 val and COCO val2017.

    python data_tools/bench/bench_eval.py                                  # 100, 1000, 5000 images
    python data_tools/bench/bench_eval.py --sizes 100 1000 --methods stream,current

Ground truth: the real LVIS v0.5 annotations of ``../shared/data/lvis_sample`` (100 images,
polygons, LVIS frequencies; ``--annotation`` for another file) tiled to N images (new ids; the
copies share the polygon lists). Proposals, ``--proposals`` (1000) per image: every object moved
by a few pixels (three copies), then random star-shaped blobs (12-24 vertices, log-uniform
radius), rasterised from polygons to COCO RLE, random scores. The masks of the 100 template
images are made once per process and decoded into fresh strings for every image, as a predictor
hands them over; making them is not timed.

The task is LVIS mask AR as ``task=lvis_ar`` computes it for masks: AR@10/100/1000, the AR
curve (12 k), the size rows and the three frequency groups. Each (method, N) runs in a fresh
process, so peak RSS is its own:

* ``stream``: ``eval.core.evaluate_stream`` with ``eval.proposals.ProposalEvaluator`` and a
  per-image results log, as ``eval/run.py`` runs it: each image is matched on arrival.
* ``current``: the evaluator before streaming (commit 135e382), repeated here: every proposal
  kept as a COCO dict, then faster-coco-eval's COCOeval (``useCats=0``) for the curve and once
  per frequency group.
* ``pycocotools``: the official API on the full result list: ``loadRes`` and
  ``COCOeval(useCats=0)`` for the curve and each frequency group (slow: small N only).

Printed per run: seconds of the evaluation (proposals handed over + final metrics), process peak
RSS, what the evaluation added over its setup (imports, ground truth, mask templates), mask
AR@10/100/1000 (identical across methods) and the per-image log size; then the 1,000 -> 5,000
growth and the projections.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_GT = REPO.parent / "shared" / "data" / "lvis_sample" / "lvis_v0.5_val_100.json"
KS = (10, 100, 1000)
# public dataset sizes (images, annotations) for the projections
TARGETS = {"LVIS v1 val": (19_809, 244_707), "COCO val2017": (5_000, 36_781)}


def tiled_gt(annotation: str, images: int) -> dict:
    """The annotation file's images repeated (ids 1..images), annotations copied shallowly."""
    from eval.datasets import load_gt

    base = load_gt(annotation)
    templates = sorted(base["images"], key=lambda im: im["id"])
    by_image: dict[int, list] = {im["id"]: [] for im in templates}
    for ann in base["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out_images, out_anns = [], []
    for i in range(images):
        template = templates[i % len(templates)]
        out_images.append({**template, "id": i + 1, "template": template["id"]})
        out_anns += [{**a, "id": len(out_anns) + k + 1, "image_id": i + 1}
                     for k, a in enumerate(by_image[template["id"]])]
    return {"images": out_images, "annotations": out_anns, "categories": base["categories"]}


def template_masks(gt: dict, proposals: int, seed: int) -> dict[int, tuple[list, np.ndarray]]:
    """Per template image: (RLE counts as bytes, model boxes xyxy (n, 4))."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    templates = {im["template"]: im for im in gt["images"]}
    objects: dict[int, list] = {t: [] for t in templates}
    first = {im["id"]: im["template"] for im in gt["images"][:len(templates)]}
    for ann in gt["annotations"]:
        if ann["image_id"] in first and isinstance(ann["segmentation"], list):
            objects[first[ann["image_id"]]].append(ann["segmentation"])
    out = {}
    for t, image in templates.items():
        h, w = image["height"], image["width"]
        rles = [mask_utils.merge(mask_utils.frPyObjects(_moved(poly, rng), h, w))
                for poly in objects[t] for _ in range(3)][:proposals]
        blobs = [_blob(rng, h, w) for _ in range(proposals - len(rles))]
        rles += mask_utils.frPyObjects(blobs, h, w) if blobs else []
        boxes = mask_utils.toBbox(rles).reshape(-1, 4)
        out[t] = ([r["counts"] for r in rles], np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]])
    return out


def _moved(polygons: list, rng) -> list:
    dx, dy = rng.integers(-8, 9, 2)
    return [(np.asarray(p, float).reshape(-1, 2) + [dx, dy]).ravel().tolist() for p in polygons]


def _blob(rng, h: int, w: int) -> list[float]:
    """A star-shaped polygon: 12-24 vertices around a random centre, log-uniform radius."""
    n = int(rng.integers(12, 25))
    radius = np.exp(rng.uniform(np.log(4), np.log(max(h, w) / 3)))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    return np.c_[cx + r * np.cos(angles), cy + r * np.sin(angles)].ravel().tolist()


def image_stream(gt: dict, pool: dict, seed: int, clock: dict):
    """(record, predictor output) per image; time spent here is added to ``clock["make"]``."""
    rng = np.random.default_rng(seed + 1)
    for image in gt["images"]:
        t0 = time.perf_counter()
        counts, boxes = pool[image["template"]]
        size = [image["height"], image["width"]]
        output = {"rles": [{"size": size, "counts": c.decode()} for c in counts],
                  "boxes": boxes, "scores": rng.random(len(counts))}
        clock["make"] += time.perf_counter() - t0
        yield image, output


def run_method(method: str, annotation: str, images: int, proposals: int, seed: int) -> dict:
    """In a fresh process: build the case (untimed), then evaluate and measure."""
    sys.path.insert(0, str(REPO))
    import psutil

    import eval.proposals  # noqa: F401  (imports are setup, not the evaluation)
    from eval.core import evaluate_stream, to_prediction
    from eval.resume import ResultLog

    gt = tiled_gt(annotation, images)
    pool = template_masks(gt, proposals, seed)
    clock = {"make": 0.0}
    stream = image_stream(gt, pool, seed, clock)
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    log_bytes = 0
    if method == "stream":
        from eval.proposals import ProposalEvaluator

        def predictions():
            for image, output in stream:
                t = time.perf_counter()
                pred = to_prediction(image, output, proposals)
                clock["make"] += time.perf_counter() - t  # the loop's conversion, as for others
                yield image, pred

        with tempfile.TemporaryDirectory() as tmp:
            log = ResultLog(Path(tmp) / "per_image.bin", {"bench": method})
            ev = ProposalEvaluator(gt, ["segm"], KS, frequency_groups=True)
            metrics = evaluate_stream(predictions(), [ev], progress=False, log=log)
            log.close()
            log_bytes = log.path.stat().st_size
    elif method == "current":
        ev = PreviousEvaluator(gt, KS)
        for image, output in stream:
            t = time.perf_counter()
            pred = to_prediction(image, output, proposals)
            clock["make"] += time.perf_counter() - t
            ev.process([image], [pred])
        metrics = ev.evaluate()
    else:
        results = []
        cat = gt["categories"][0]["id"]
        for image, output in stream:
            t = time.perf_counter()
            results += [{"image_id": image["id"], "category_id": cat, "score": float(s),
                         "segmentation": r} for r, s in zip(output["rles"], output["scores"],
                                                            strict=True)]
            clock["make"] += time.perf_counter() - t
        metrics = plain_pycocotools(gt, results)
    seconds = time.perf_counter() - t0 - clock["make"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "images": images, "seconds": seconds, "peak_rss": peak,
            "base_rss": base, "step_rss": max(peak - base, 0), "log_bytes": log_bytes,
            "ar": [metrics[f"mask/ar_{k}"] for k in KS],
            "groups": [metrics[f"mask/ar_{g}_{KS[-1]}"] for g in "fcr"]}


class PreviousEvaluator:
    """The proposal evaluator before streaming (commit 135e382), masks only: proposals kept as
    COCO dicts, then the recall function's faster-coco-eval engine on the whole set."""

    def __init__(self, gt: dict, max_dets) -> None:
        self.gt, self.max_dets, self.ids, self.props = gt, tuple(max_dets), [], []

    def process(self, inputs, outputs) -> None:
        for pred in outputs:
            n = min(len(pred), self.max_dets[-1])
            self.ids.append(pred.image_id)
            self.props.extend(
                {"image_id": pred.image_id, "score": s, "segmentation": r, "area": a, "bbox": b}
                for s, r, a, b in zip(pred.scores[:n].tolist(), pred.rles[:n],
                                      pred.areas[:n].tolist(), pred.mask_boxes[:n].tolist(),
                                      strict=True))

    def evaluate(self) -> dict[str, float]:
        from eval.core import restrict_gt
        from eval.proposals import CURVE_KS, OLN_AUC_KS
        from fastsam_train.metrics.recall import average_recall

        top = self.max_dets[-1]
        gt = restrict_gt(self.gt, self.ids)
        ks = tuple(sorted({k for k in (*self.max_dets, *OLN_AUC_KS, *CURVE_KS) if k <= top}))
        ar = average_recall(gt, self.props, "segm", ks, "faster")
        out = {f"mask/ar_{k}": ar[f"ar_{k}"] for k in self.max_dets}
        freq = {c["id"]: c["frequency"] for c in gt["categories"]}
        for g in "fcr":
            sub = restrict_gt(gt, self.ids, lambda a, g=g: freq[a["category_id"]] == g)
            out[f"mask/ar_{g}_{top}"] = average_recall(sub, self.props, "segm", (top,),
                                                       "faster")[f"ar_{top}"]
        return out


def plain_pycocotools(gt: dict, results: list[dict]) -> dict[str, float]:
    """loadRes + COCOeval(useCats=0): the curve's k, then each frequency group at 1000."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from eval.proposals import CURVE_KS
    from fastsam_train.metrics.recall import mean_valid

    def recall(dataset, max_dets):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = dataset
            coco_gt.createIndex()
            ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "segm")
            ev.params.useCats = 0
            ev.params.maxDets = list(max_dets)
            ev.evaluate()
            ev.accumulate()
        r = ev.eval["recall"][:, 0, 0, :]
        return [mean_valid(r[:, i]) for i in range(len(max_dets))]

    ar = dict(zip(CURVE_KS, recall(gt, CURVE_KS), strict=True))
    out = {f"mask/ar_{k}": ar[k] for k in KS}
    freq = {c["id"]: c["frequency"] for c in gt["categories"]}
    for g in "fcr":
        sub = {**gt, "annotations": [a for a in gt["annotations"]
                                     if freq[a["category_id"]] == g]}
        out[f"mask/ar_{g}_1000"] = recall(sub, (1000,))[0]
    return out


def gt_bytes_per_annotation(annotation: str) -> float:
    """Python heap per loaded annotation (json.loads of the annotation list, tracemalloc)."""
    text = json.dumps(json.loads(Path(annotation).read_text())["annotations"])
    tracemalloc.start()
    anns = json.loads(text)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size / len(anns)


def report(rows: list[dict], annotation: str) -> None:
    """The growth and projection lines."""
    mib = 2 ** 20
    ours = sorted((r for r in rows if r["method"] == "stream"), key=lambda r: r["images"])
    if len(ours) >= 2:
        a, b = ours[-2], ours[-1]
        growth = b["peak_rss"] / a["peak_rss"] - 1
        print(f"\nstream: peak RSS {a['images']} -> {b['images']} images: "
              f"{a['peak_rss'] / mib:.0f} -> {b['peak_rss'] / mib:.0f} MiB "
              f"({100 * growth:+.1f} %; goal < +10 %)")
        # conservative: the measured peak (which holds the tiled ground truth and the mask
        # templates) extended linearly, plus the target's own annotations in Python objects
        slope = max(b["peak_rss"] - a["peak_rss"], 0) / (b["images"] - a["images"])
        per_ann = gt_bytes_per_annotation(annotation)
        for name, (n_img, n_ann) in TARGETS.items():
            gt_mib = n_ann * per_ann / mib
            projected = (b["peak_rss"] + slope * max(n_img - b["images"], 0)) / mib
            print(f"stream projected for {name} ({n_img} images, {n_ann} annotations): "
                  f"{projected:.0f} MiB (measured peak + {slope / 1024:.1f} KiB per image) + "
                  f"{gt_mib:.0f} MiB for its annotations ({per_ann:.0f} B each) = "
                  f"{(projected + gt_mib) / 1024:.2f} GiB"
                  f"{' (goal < 4 GiB)' if name.startswith('LVIS') else ''}; per-image "
                  f"log {b['log_bytes'] / b['images'] * n_img / mib:.0f} MiB on disk")
    for method in ("current", "pycocotools"):
        theirs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["images"])
        if len(theirs) >= 2:
            a, b = theirs[-2], theirs[-1]
            slope = (b["step_rss"] - a["step_rss"]) / (b["images"] - a["images"])
            for name, (n_img, _) in TARGETS.items():
                print(f"{method} projected for {name}: +{slope * n_img / 2 ** 30:.1f} GiB in "
                      f"the evaluation step ({slope / mib:.2f} MiB per image)")
    for n in sorted({r["images"] for r in rows}):
        at = {r["method"]: r for r in rows if r["images"] == n}
        if "stream" in at and "current" in at:
            print(f"{n} images: stream {at['stream']['seconds']:.1f} s vs current "
                  f"{at['current']['seconds']:.1f} s "
                  f"({at['current']['seconds'] / at['stream']['seconds']:.2f}x); "
                  f"AR identical: {at['stream']['ar'] == at['current']['ar']}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotation", default=str(DEFAULT_GT))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--proposals", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="stream,current,pycocotools")
    ap.add_argument("--max-images", default="current=1000,pycocotools=100",
                    help="largest size per method (the in-memory paths do not scale)")
    args = ap.parse_args(argv)
    if not Path(args.annotation).is_file():
        sys.exit(f"annotation file not found: {args.annotation} (pass --annotation)")
    limits = {k: int(v) for k, v in (p.split("=") for p in args.max_images.split(",") if p)}
    rows = []
    for n in args.sizes:
        for method in args.methods.split(","):
            if n > limits.get(method, n):
                print(f"{method:>12} x {n:5d}: skipped (--max-images {method}="
                      f"{limits[method]})", flush=True)
                continue
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                r = pool.submit(run_method, method, args.annotation, n, args.proposals,
                                args.seed).result()
            rows.append(r)
            print(f"{method:>12} x {n:5d} images: {r['seconds']:8.1f} s  peak RSS "
                  f"{r['peak_rss'] / 2**20:6.0f} MiB (+{r['step_rss'] / 2**20:.0f} MiB over "
                  f"setup)  mask AR@10/100/1000 {' / '.join(f'{a:.4f}' for a in r['ar'])}  "
                  f"f/c/r {' / '.join(f'{a:.4f}' for a in r['groups'])}"
                  + (f"  log {r['log_bytes'] / n / 1024:.1f} KiB/image" if r['log_bytes']
                     else ""), flush=True)
    report(rows, args.annotation)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
