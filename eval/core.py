"""The evaluator protocol and the one inference loop shared by every task (COCO / LVIS /
BSDS regions and BSDS edges).

    predictions = inference_stream(dataset, predictor, images, batch_size=1, max_dets=1000,
                                   max_pixels=50_000_000)   # conf/eval.yaml max_pixels
    metrics = evaluate_stream(predictions, [ProposalEvaluator(dataset.gt)], total=len(images))

As in detectron2: an evaluator is ``reset()`` / ``process(inputs, outputs)`` / ``evaluate()``;
the loop reads each image once, runs the predictor, turns its output into a ``Prediction``
(COCO RLE with area and box precomputed) and hands it to every evaluator. Saved predictions
(``report.read_predictions``) go through the same ``evaluate_stream``. Single process: a
multi-rank version would gather inside ``evaluate()``.

Streaming and resuming: the COCO / LVIS evaluators are ``ImageEvaluator``s, whose ``process``
is ``add_result(image_id, image_result(image, prediction))``: the image is scored at once and
only a small result (a dict of numpy arrays) is kept. Given a ``ResultLog`` (eval/resume.py),
``evaluate_stream`` appends each image's results to it before adding them, and adds the logged
results of the images in ``replay`` back instead of recomputing them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from eval.datasets import EvalDataset
from eval.resume import ResultLog
from fastsam_train import images as image_files
from fastsam_train.masks import as_numpy, encode_masks, rle_stats

log = logging.getLogger(__name__)


class EmptyPredictionsError(ValueError):
    """Nothing to score: reporting 0.000 here would hide a broken pipeline (FastSAM #183)."""


class Predictor(Protocol):
    """What the loop needs from a model (everything mode).

    ``predict(images)``: RGB uint8 arrays (H, W, 3) -> one dict per image with ``scores`` (n,),
    ``boxes`` (n, 4) xyxy in original pixels, and either ``masks`` bool (n, H, W) at the original
    image size (numpy or torch) or ``rles`` (n COCO RLE dicts of size [H, W]). A predictor with
    ``needs_records = True`` (SAM's box prompts) is called ``predict(images, records)``.
    """

    def predict(self, images: list[np.ndarray]) -> list[dict]: ...


class Evaluator(Protocol):
    """detectron2's DatasetEvaluator: ``reset()`` before a run, ``process(inputs, outputs)``
    with image records (``id``, ``height``, ``width``, ...) and their ``Prediction``s,
    ``evaluate()`` -> ``/``-namespaced metrics (raises rather than report an empty run)."""

    def reset(self) -> None: ...

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None: ...

    def evaluate(self) -> dict[str, float]: ...


class ImageEvaluator(Evaluator, Protocol):
    """An evaluator that scores image by image: ``image_result(image, prediction)`` -> a dict
    of small numeric numpy arrays (what is kept of the image, and what the log stores);
    ``add_result(image_id, result)`` folds it in (raises on an image added twice)."""

    def image_result(self, image: dict, prediction: Prediction) -> dict[str, np.ndarray]: ...

    def add_result(self, image_id: int, result: dict[str, np.ndarray]) -> None: ...


@dataclass
class Prediction:
    """One image's proposals by descending score: ``rles`` (COCO RLE, ``counts`` str),
    ``areas`` (n,) mask pixels, ``mask_boxes`` (n, 4) xywh of the masks (``toBbox``),
    ``boxes`` (n, 4) xyxy from the model, ``scores`` (n,)."""

    image_id: int
    height: int
    width: int
    rles: list[dict]
    areas: np.ndarray
    mask_boxes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def to_prediction(image: dict, output: dict, max_dets: int | None = None) -> Prediction:
    """Validate one predictor output against its image record and convert it.

    Raises ValueError when the pieces disagree in length, a mask is not at the image's size
    (``height`` x ``width`` of the annotation file), or a box is not xyxy.
    """
    iid, h, w = image["id"], image["height"], image["width"]
    scores = as_numpy(output["scores"]).astype(np.float64).reshape(-1)
    boxes = as_numpy(output["boxes"]).astype(np.float64).reshape(-1, 4)
    masks = output.get("masks")
    rles = output.get("rles")
    if (masks is None) == (rles is None):
        raise ValueError(f"image {iid}: the predictor must return exactly one of masks / rles")
    n = len(masks) if masks is not None else len(rles)
    if not len(scores) == len(boxes) == n:
        raise ValueError(f"image {iid}: {len(scores)} scores, {len(boxes)} boxes, {n} masks")
    shapes = {tuple(masks.shape[1:])} if masks is not None else \
        {tuple(r["size"]) for r in rles}
    if n and shapes != {(h, w)}:
        raise ValueError(f"image {iid}: masks are {sorted(shapes)} but the image is {(h, w)} in "
                         "the annotations; masks must be at the original image size")
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
        raise ValueError(f"image {iid}: non-finite scores or boxes")
    if (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError(f"image {iid}: boxes must be xyxy (x2 >= x1, y2 >= y1)")
    order = np.argsort(-scores, kind="stable")[:max_dets]
    if masks is not None:
        rles = encode_masks(masks, order)
    else:
        rles = [{"size": [h, w], "counts": rles[i]["counts"].decode("ascii")
                 if isinstance(rles[i]["counts"], bytes) else rles[i]["counts"]} for i in order]
    areas, mask_boxes = rle_stats(rles)
    return Prediction(iid, h, w, rles, areas, mask_boxes, boxes[order], scores[order])


def read_rgb(path, image: dict, max_pixels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file, checked against its record's size when the record
    has one (EXIF orientation is ignored: annotations are in stored pixel order, as BSR's
    MATLAB ``imread`` reads BSDS). Read by ``fastsam_train.images``: over ``max_pixels`` is
    refused before decoding, corrupt data is logged."""
    rgb = image_files.read_rgb(path, max_pixels, orientation=False)
    if "height" in image and rgb.shape[:2] != (image["height"], image["width"]):
        raise ValueError(f"image id {image['id']} ({path}) is {rgb.shape[:2]} but "
                         f"{(image['height'], image['width'])} in the annotations")
    return rgb


def sized(image: dict, rgb: np.ndarray) -> dict:
    """The record with ``height`` / ``width`` (from the pixels read when it has none)."""
    return image if "height" in image else {**image, "height": rgb.shape[0],
                                            "width": rgb.shape[1]}


def inference_stream(dataset: EvalDataset, predictor: Predictor, images: list[dict],
                     batch_size: int = 1, max_dets: int | None = 1000,
                     timing: dict | None = None, *, max_pixels: int,
                     convert: Callable[[dict, dict, int | None], Any] = to_prediction
                     ) -> Iterator[tuple[dict, Any]]:
    """Run ``predictor`` over ``images`` (all files checked first); yields (record, output)
    with each output turned into a ``Prediction`` (or what ``convert(record, output,
    max_dets)`` returns: ``eval.edges.edge_map`` for edge maps). ``timing`` (if given)
    accumulates seconds in ``read`` / ``predict`` / ``convert``; ``max_pixels``: larger image
    files are refused before decoding (conf: ``max_pixels``)."""
    dataset.check_images(images)
    timing = timing if timing is not None else {}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        t0 = time.perf_counter()
        arrays = [read_rgb(dataset.image_path(im), im, max_pixels) for im in batch]
        batch = [sized(im, rgb) for im, rgb in zip(batch, arrays, strict=True)]
        t1 = time.perf_counter()
        outputs = predictor.predict(arrays, batch) if getattr(predictor, "needs_records", False) \
            else predictor.predict(arrays)
        t2 = time.perf_counter()
        if len(outputs) != len(batch):
            raise ValueError(f"predictor returned {len(outputs)} outputs for {len(batch)} images")
        preds = [convert(im, out, max_dets) for im, out in zip(batch, outputs, strict=True)]
        t3 = time.perf_counter()
        for key, dt in (("read", t1 - t0), ("predict", t2 - t1), ("convert", t3 - t2)):
            timing[key] = timing.get(key, 0.0) + dt
        yield from zip(batch, preds, strict=True)


def require_coverage(stream: Iterable[tuple[dict, Prediction]], dataset: EvalDataset,
                     wanted: set[int], allow_subset: bool, source: str
                     ) -> Iterator[tuple[dict, Prediction]]:
    """Pass ``stream`` through; when it ends, check it covered every image of ``wanted``.

    Saved predictions for only some of the images would otherwise be scored on those alone,
    silently. Raises ValueError naming ``source`` with the counts, unless ``allow_subset``
    (then a warning); raises too if none of the covered images has an annotation."""
    seen: set[int] = set()
    for image, pred in stream:
        seen.add(image["id"])
        yield image, pred
    missing = sorted(wanted - seen)
    if missing:
        what = (f"{source} has predictions for {len(seen)} of the {len(wanted)} images "
                f"evaluated (missing ids: {missing[:5]}{', ...' if len(missing) > 5 else ''})")
        if not allow_subset:
            raise ValueError(f"{what}; pass allow_subset=true to score only those images")
        log.warning("%s; scoring only those (allow_subset=true)", what)
    dataset.check_annotated([{"id": i} for i in seen])


def evaluate_stream(stream: Iterable[tuple[dict, Prediction]], evaluators: Sequence[Evaluator],
                    total: int | None = None, progress: bool = True, desc: str = "evaluating",
                    log: ResultLog | None = None,
                    replay: Iterable[int] = ()) -> dict[str, float]:
    """reset every evaluator, feed it each (record, Prediction), merge their ``evaluate()``.

    log: with it (every evaluator must be an ``ImageEvaluator``), the logged results of the
    images in ``replay`` are added first, then each new image's results are appended to the log
    (in evaluator order) before they are added.
    """
    for ev in evaluators:
        ev.reset()
    if log is not None:
        lacking = [type(ev).__name__ for ev in evaluators if not hasattr(ev, "image_result")]
        if lacking:
            raise TypeError(f"a results log needs per-image evaluators; {lacking} are not")
        for image_id, results in log.records(replay):
            for ev, result in zip(evaluators, results, strict=True):
                ev.add_result(image_id, result)
    for image, pred in tqdm(stream, total=total, desc=desc, unit="img", disable=not progress):
        if log is None:
            for ev in evaluators:
                ev.process([image], [pred])
            continue
        results = [ev.image_result(image, pred) for ev in evaluators]
        log.append(image["id"], results)
        for ev, result in zip(evaluators, results, strict=True):
            ev.add_result(image["id"], result)
    if log is not None:
        log.sync()
    results: dict[str, float] = {}
    for ev in evaluators:
        results.update(ev.evaluate())
    return results


def restrict_gt(gt: dict, image_ids: Iterable[int], keep_ann=None) -> dict:
    """The ground truth of ``image_ids`` (annotations also filtered by ``keep_ann``), with
    annotation ids renumbered 1..N: COCOeval and LVISEval record matches by id with 0 meaning
    "unmatched", so an object with id 0 (panopticapi's sample has one) could never be hit."""
    ids = set(image_ids)
    anns = [a for a in gt["annotations"] if a["image_id"] in ids
            and (keep_ann is None or keep_ann(a))]
    return {"images": [im for im in gt["images"] if im["id"] in ids],
            "annotations": [{**a, "id": i} for i, a in enumerate(anns, start=1)],
            "categories": gt["categories"]}
