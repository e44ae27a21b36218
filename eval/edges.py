"""BSDS500 zero-shot edge detection (FastSAM Table 2): ``python eval/run.py task=bsds_edges``.

    python eval/run.py task=bsds_edges model.weights=FastSAM-x.pt model.allow_pickle=true
    python eval/run.py task=bsds_edges task.methods=[sobel,canny]     # baselines, no model

Every method is an edge ``predict(images) -> [{"edges": (H, W) in [0, 1]}]`` and goes through
the same loop as the COCO tasks (``eval.core.inference_stream`` with ``convert=edge_map`` over
the registered split's records, ``eval.datasets`` ``boundaries=True``; then
``eval.core.evaluate_stream``) to evaluators of the same protocol: a
``BoundaryEvaluator`` (our exact re-implementation of the BSR benchmark, ``eval.bsds``; its
numbers are checked against BSR's own demo outputs and pyedgeeval in tests/test_bsds.py) and an
``EdgeMapWriter`` that keeps every map as the 8-bit PNG the benchmark reads. Matching runs in
worker processes while the model runs in the main one.

The model's maps (FastSAM, or SAM with ``model=sam``) follow SAM's protocol
(``eval.bsds.masks``): everything-mode probability maps -> Sobel on each, kept on the mask's
outer boundary -> max -> normalise -> edge NMS.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.bsds import (
    BoundaryScores,
    canny_edges,
    evaluate_against,
    plot_pr_curves,
    sobel_edges,
    summarize,
    to_png,
    write_results,
)
from eval.bsds.masks import edges_from_masks
from fastsam_train.io import atomic_write_image, atomic_write_json, atomic_write_text

# FastSAM Table 2 (= SAM Table 3 for the rows above FastSAM): ODS, OIS, AP, R50, as the paper
# text in ../shared/paper reads; CUT: no number there (cut off), "—": the text prints a dash.
CUT = "cut in text"
PAPER = {
    "HED": (0.788, 0.808, 0.840, CUT),
    "EDETR": (0.840, 0.858, 0.896, CUT),
    "Sobel filter": (0.539, "—", CUT, CUT),
    "Canny": (0.600, 0.640, CUT, CUT),
    "Felz-Hutt": (0.610, 0.640, 0.560, CUT),
    "SAM": (0.768, 0.786, 0.794, CUT),
    "FastSAM": (0.750, 0.790, 0.793, CUT),
}
COLUMNS = ("ods", "ois", "ap", "r50")
LABELS = {"fastsam": "FastSAM", "sam": "SAM", "sobel": "Sobel", "canny": "Canny"}  # row names


# --- the loop's conversion (eval.core.inference_stream's ``convert``) -------------------------
def edge_map(record: dict, output: dict, max_dets: int | None = None) -> np.ndarray:
    """An edge predictor's output -> its map float (H, W) in [0, 1], checked to be at the
    image's size (``max_dets`` does not apply to maps)."""
    edges = np.asarray(output["edges"], dtype=np.float64)
    if edges.shape != (record["height"], record["width"]):
        raise ValueError(f"{record['image']}: edge map {edges.shape} is not the image size "
                         f"{(record['height'], record['width'])}")
    return edges


# --- methods --------------------------------------------------------------------------------
class MaskEdges:
    """A model's everything mode with probability maps (``everything(images, probs=True)``:
    FastSAM's ``Predictor`` or ``eval.sam.SamEverything``) -> SAM's edge protocol
    (``edges_from_masks``)."""

    def __init__(self, predictor, nms: bool = True) -> None:
        self.predictor, self.nms = predictor, nms

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        segs = self.predictor.everything(images, probs=True)
        return [{"edges": edges_from_masks(s.probs, s.masks, self.nms) if len(s)
                 else np.zeros(im.shape[:2])} for s, im in zip(segs, images, strict=True)]


class ClassicalEdges:
    """A baseline of ``eval.bsds.baselines`` (``sobel`` / ``canny``) as an edge predictor."""

    FUNCTIONS = {"sobel": sobel_edges, "canny": canny_edges}

    def __init__(self, name: str, **kwargs) -> None:
        if name not in self.FUNCTIONS:
            raise ValueError(f"unknown edge baseline {name!r}; choose from {list(self.FUNCTIONS)}")
        self.fn, self.kwargs = self.FUNCTIONS[name], kwargs

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        return [{"edges": self.fn(np.ascontiguousarray(im[..., ::-1]), **self.kwargs)}
                for im in images]


# --- evaluators (the protocol of eval.core: reset / process / evaluate) ---------------------
def _count(png: np.ndarray, gt_path: Path, image_path: Path, **kwargs):
    return evaluate_against(png.astype(np.float64) / 255.0, gt_path, image_path, **kwargs)


class BoundaryEvaluator:
    """BSR boundary benchmark over a stream of edge maps (``eval.bsds``: thinning, exact
    matching against every annotator, ODS / OIS / AP / R50 as BSR and ``edgesEvalDir``).

    Each map is scored as the 8-bit PNG a benchmark would read (``round(255 x)``). Matching is
    submitted to ``workers`` processes as maps arrive (1 = in this process). ``evaluate()`` sets
    ``self.scores`` (BoundaryScores) and ``self.counts`` ({id: ImageCounts}). ``nthresh``
    (BSR: 99 thresholds), ``max_dist`` (BSR: 0.0075 of the image diagonal) and ``exact``: the
    task's keys (conf/task/bsds_edges.yaml); ``workers`` None: every core."""

    def __init__(self, *, nthresh: int, max_dist: float, exact: bool, workers: int | None,
                 progress: bool = True) -> None:
        self.kwargs = {"nthresh": nthresh, "max_dist": max_dist, "exact": exact}
        self.workers, self.progress = workers or os.cpu_count() or 1, progress
        self.scores: BoundaryScores | None = None
        self.counts: dict = {}

    def reset(self) -> None:
        self._pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        self._pending: list[tuple[str, Future | object]] = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[np.ndarray]) -> None:
        for record, edges in zip(inputs, outputs, strict=True):
            args = (to_png(edges), record["gt"], record["image"])
            job = self._pool.submit(_count, *args, **self.kwargs) if self._pool else \
                _count(*args, **self.kwargs)
            self._pending.append((record["id"], job))

    def evaluate(self) -> dict[str, float]:
        try:
            waiting = [j for _, j in self._pending if isinstance(j, Future)]
            if waiting:  # the stream's bar counted submissions; this one counts finished maps
                for _ in tqdm(as_completed(waiting), total=len(waiting), unit="img",
                              desc="matching", disable=not self.progress):
                    pass
            self.counts = {i: j.result() if isinstance(j, Future) else j
                           for i, j in self._pending}
        finally:
            if self._pool:
                self._pool.shutdown(cancel_futures=True)
        if not self.counts:
            raise ValueError("no edge maps were evaluated")
        self.scores = summarize(list(self.counts.values()))
        return {"images": float(len(self.counts)),
                **{k.split("/")[1]: v for k, v in self.scores.metrics().items()}}


class EdgeMapWriter:
    """Writes each edge map as ``<dir>/<id>.png`` (uint8, ``round(255 x)``), the format
    ``eval.bsds.benchmark_dir`` and BSR read; written to a temp name, then renamed."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def reset(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def process(self, inputs: Sequence[dict], outputs: Sequence[np.ndarray]) -> None:
        for record, edges in zip(inputs, outputs, strict=True):
            atomic_write_image(self.directory / f"{record['id']}.png", to_png(edges),
                               fsync=False)

    def evaluate(self) -> dict[str, float]:
        return {}


# --- report ---------------------------------------------------------------------------------
def _cell(v) -> str:
    if isinstance(v, str):
        return v
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(results: dict[str, BoundaryScores], info: dict) -> str:
    """The paper's Table 2 with our rows (same pipeline for every method) underneath."""
    head = "| method | ODS | OIS | AP | R50 |\n|---|---|---|---|---|"
    paper = [f"| {name} (paper) | " + " | ".join(_cell(v) for v in vals) + " |"
             for name, vals in PAPER.items()]
    ours = [f"| **{LABELS.get(name, name)} (ours)** | "
            + " | ".join(_cell(getattr(s, c)) for c in COLUMNS) + " |"
            for name, s in results.items()]
    from eval.report import model_line

    return "\n".join([
        "# bsds_edges: BSDS500 test, zero-shot edge detection (FastSAM Table 2)", "",
        f"{info.get('images', '?')} images of `{info.get('image_dir', '?')}`; ground truth "
        f"`{info.get('gt_dir', '?')}`; {info['nthresh']} thresholds, maxDist "
        f"{info['max_dist']}, {'exact' if info['exact'] else 'fast'} "
        "matching.", "", model_line(info), "", head, *paper, *ours, "",
        "Paper rows: FastSAM (arXiv:2306.12156v1) Table 2, which copies SAM's Table 3 for the "
        "rows above it, as they read in ../shared/paper/fastsam_arxiv_2306.12156.txt: \"cut "
        "in text\" marks cells the text has no number for (cut off there), — a dash it prints. "
        "AP is BSR's Area_PR; R50 is edgesEvalDir's recall at 50% precision.", ""])


def write_outputs(out: Path, results: dict[str, BoundaryScores], counts: dict[str, dict],
                  info: dict) -> dict[str, Path]:
    """metrics.json, report.md, pr_curve.png and BSR's files per method; their paths."""

    out.mkdir(parents=True, exist_ok=True)
    for name, scores in results.items():
        write_results(out / "bsr" / name, counts[name], scores)
    payload = {"task": "bsds_edges", **info,
               "metrics": {n: {k: (None if math.isnan(v) else v)
                               for k, v in s.metrics(n).items()} for n, s in results.items()},
               "paper": {n: dict(zip(COLUMNS, v, strict=True)) for n, v in PAPER.items()}}
    paths = {"metrics": out / "metrics.json", "markdown": out / "report.md",
             "plot": out / "pr_curve.png"}
    atomic_write_json(paths["metrics"], payload, indent=2, default=str)
    atomic_write_text(paths["markdown"], markdown(results, info))
    plot_pr_curves({f"{LABELS.get(n, n)} (ours)": s for n, s in results.items()}, paths["plot"],
                   title="BSDS500 test: zero-shot edges")
    return paths
