"""BSDS500 zero-shot edge detection (FastSAM Table 2): ``python eval/run.py task=bsds_edges``.

    python eval/run.py task=bsds_edges model.weights=FastSAM-x.pt model.allow_pickle=true
    python eval/run.py task=bsds_edges task.methods=[sobel,canny]     # baselines, no model

Every method is an edge ``predict(images) -> [{"edges": (H, W) in [0, 1]}]`` and goes through
the same loop and evaluators as the COCO tasks (``eval.core.evaluate_stream``): a
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
from collections.abc import Iterator, Sequence
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
from eval.core import MAX_PIXELS
from eval.datasets import data_root
from fastsam_train.data.bsds import split_dirs
from fastsam_train.images import read_rgb
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
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".bmp", ".tif")


# --- data -----------------------------------------------------------------------------------
# BSDS splits by name, under the data root in BSR's layout (<root>/BSR/BSDS500/data/{images,
# groundTruth}/<split>), a <root>/bsds500 folder or flat (fastsam_train.data.bsds.split_dirs).
BSDS_DATASETS = {"bsds500_test": "test", "bsds500_val": "val", "bsds500_train": "train"}


def bsds_folders(name: str, root: str | Path | None = None, image_dir: str | Path | None = None,
                 gt_dir: str | Path | None = None, layout: str = "auto") -> tuple[Path, Path]:
    """(image folder, ground-truth folder) of the registered split ``name`` under ``root``
    (default ``$FASTSAM_DATA``, conf: ``paths.data_dir``); ``image_dir`` / ``gt_dir`` override."""
    if name not in BSDS_DATASETS:
        raise KeyError(f"unknown BSDS split {name!r}; registered: {sorted(BSDS_DATASETS)}")
    if image_dir and gt_dir:
        return Path(image_dir), Path(gt_dir)
    images, gts = split_dirs(data_root(root), BSDS_DATASETS[name], layout)
    return (Path(image_dir) if image_dir else images, Path(gt_dir) if gt_dir else gts)


def bsds_records(image_dir: str | Path, gt_dir: str | Path,
                 max_images: int | None = None) -> list[dict]:
    """One record per ground-truth file, sorted by id: ``{"id", "image", "gt"}``.

    Standard layout: ``BSR/BSDS500/data/images/test/<id>.jpg`` beside
    ``.../groundTruth/test/<id>.mat``. Every .mat needs an image and every image a .mat;
    anything missing raises FileNotFoundError naming the file (before any model is loaded).
    """
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    for d in (image_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"BSDS folder not found: {d}")
    images = {p.stem: p for p in sorted(image_dir.iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES}
    gts = {p.stem: p for p in gt_dir.glob("*.mat")}
    if not gts:
        raise FileNotFoundError(f"no ground truth (*.mat) in {gt_dir}")
    if no_gt := sorted(set(images) - set(gts)):
        raise FileNotFoundError(f"ground truth not found: {gt_dir / (no_gt[0] + '.mat')} "
                                f"(for image {images[no_gt[0]]})")
    if no_image := sorted(set(gts) - set(images)):
        raise FileNotFoundError(f"image not found for ground truth {gts[no_image[0]]} "
                                f"(looked for {no_image[0]}.jpg/.png in {image_dir})")
    records = [{"id": i, "image": images[i], "gt": gts[i]} for i in sorted(gts)]
    return records[:max_images] if max_images else records


def edge_stream(records: Sequence[dict], predictor, batch_size: int = 1,
                max_pixels: int = MAX_PIXELS) -> Iterator[tuple[dict, np.ndarray]]:
    """(record, edge map float (H, W) in [0, 1]) for every record, ``batch_size`` at a time;
    image files over ``max_pixels`` are refused before decoding."""
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        arrays = [read_rgb(r["image"], max_pixels) for r in batch]
        outputs = predictor.predict(arrays)
        for record, image, out in zip(batch, arrays, outputs, strict=True):
            edges = np.asarray(out["edges"], dtype=np.float64)
            if edges.shape != image.shape[:2]:
                raise ValueError(f"{record['image']}: edge map {edges.shape} is not the image "
                                 f"size {image.shape[:2]}")
            yield {**record, "height": image.shape[0], "width": image.shape[1]}, edges


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
    ``self.scores`` (BoundaryScores) and ``self.counts`` ({id: ImageCounts})."""

    def __init__(self, nthresh: int = 99, max_dist: float = 0.0075, exact: bool = True,
                 workers: int | None = None, progress: bool = True) -> None:
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
        f"`{info.get('gt_dir', '?')}`; {info.get('nthresh', 99)} thresholds, maxDist "
        f"{info.get('max_dist', 0.0075)}, {'exact' if info.get('exact', True) else 'fast'} "
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
