"""Evaluate FastSAM on COCO / LVIS: ``python eval/run.py task=coco_ar model.weights=...``.

Tasks: ``coco_ar`` / ``lvis_ar`` (class-agnostic proposals), ``coco_instance`` /
``lvis_instance`` (detector boxes as prompts, ``task.detections=<results.json>``),
``bsds_edges`` (BSDS500 zero-shot edges, with Sobel / Canny rows; see eval/edges.py).
``predictions=<run>/predictions.jsonl.gz`` re-evaluates saved predictions without the model.
Writes ``metrics.json``, ``report.md``, ``ar_curve.png`` and ``predictions.jsonl.gz`` to the
Hydra run directory, and ``per_image.bin``: every image's match results as soon as it is scored.
Running again into the same folder (``hydra.run.dir=<run>``) with the same task, data and model
settings resumes: logged images are not predicted again (``resume=false``: no log).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the `eval` package, not its modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fastsam_train.entry import one_line_errors  # noqa: E402

log = logging.getLogger(__name__)


class FastSAMEverything:
    """``fastsam_train.infer.Predictor`` in everything mode as the loop's ``Predictor``."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def predict(self, images: list) -> list[dict]:
        segs = self.predictor.everything(images, rle=True)
        return [{"rles": s.rles, "boxes": s.boxes, "scores": s.scores} for s in segs]


def build_predictor(model_cfg: DictConfig):
    """The one place the model is built: weights + everything-mode options -> Predictor."""
    from fastsam_train.infer import Predictor

    cfg = OmegaConf.to_container(model_cfg, resolve=True)
    weights, allow_pickle = cfg.pop("weights"), cfg.pop("allow_pickle")
    return FastSAMEverything(Predictor.from_weights(
        weights, allow_pickle=allow_pickle, device=cfg.pop("device"), half=cfg.pop("half"),
        **cfg))


def build_evaluator(task: DictConfig, gt: dict):
    if task.kind == "proposals":
        from eval.proposals import ProposalEvaluator

        return ProposalEvaluator(gt, list(task.iou_types), list(task.max_dets),
                                 task.frequency_groups, task.box_source)
    if task.kind == "instance":
        from eval.instance import InstanceEvaluator

        return InstanceEvaluator(gt, task.detections, task.api, task.get("max_dets", 300))
    raise ValueError(f"task.kind must be 'proposals' or 'instance', got {task.kind!r}")


def build_loggers(cfg: DictConfig) -> list:
    """The Lightning loggers of ``cfg.logger`` (conf/logger); wandb offline unless
    ``wandb_offline=false``. (Not train.run.instantiate_group: that import pulls ultralytics.)"""
    if not cfg.get("logger"):
        return []
    loggers = []
    for spec in OmegaConf.to_container(cfg.logger, resolve=True).values():
        if isinstance(spec, dict) and "_target_" in spec:
            if "Wandb" in spec["_target_"] and cfg.wandb_offline:
                spec["offline"] = True
            loggers.append(hydra.utils.instantiate(spec))
    return loggers


def run_edges(cfg: DictConfig) -> dict[str, float]:
    """BSDS500 edges: every method of ``task.methods`` through the same loop and evaluator;
    edge PNGs, BSR files, metrics.json, report.md and pr_curve.png in the run directory."""
    from eval.core import evaluate_stream
    from eval.edges import (
        BoundaryEvaluator,
        ClassicalEdges,
        EdgeMapWriter,
        FastSAMEdges,
        bsds_folders,
        bsds_records,
        edge_stream,
        write_outputs,
    )
    from eval.report import log_metrics

    task, out = cfg.task, Path(cfg.paths.output_dir)
    image_dir, gt_dir = bsds_folders(task.dataset, cfg.paths.data_dir, task.image_dir,
                                     task.gt_dir)
    records = bsds_records(image_dir, gt_dir, cfg.max_images)
    methods = list(task.methods)
    unknown = set(methods) - {"fastsam", *ClassicalEdges.FUNCTIONS}
    if unknown or not methods:
        raise ValueError(f"task.methods must name fastsam / sobel / canny, got {methods}")
    results, counts, metrics, files = {}, {}, {"images": float(len(records))}, {}
    for method in methods:
        if method == "fastsam":
            predictor = FastSAMEdges(build_predictor(cfg.model).predictor, task.nms)
        else:
            predictor = ClassicalEdges(method, **task.baselines[method])
        evaluator = BoundaryEvaluator(task.nthresh, task.max_dist, task.exact, task.workers,
                                      cfg.progress)
        edges_dir = out / "edges" / method
        evaluate_stream(edge_stream(records, predictor, cfg.batch_size, cfg.max_pixels),
                        [evaluator, EdgeMapWriter(edges_dir)], len(records), cfg.progress,
                        desc=f"{task.name}:{method}")
        results[method], counts[method] = evaluator.scores, evaluator.counts
        metrics.update(evaluator.scores.metrics(method))
        files.update({f"{method}_{r['id']}": edges_dir / f"{r['id']}.png"
                      for r in records[:task.logged_maps]})
    info = {"images": len(records), "dataset": task.dataset, "image_dir": str(image_dir),
            "gt_dir": str(gt_dir),
            "nthresh": task.nthresh, "max_dist": task.max_dist, "exact": task.exact,
            "source": str(cfg.model.weights) if "fastsam" in methods else None,
            "config": OmegaConf.to_container(cfg, resolve=True)}
    files.update(write_outputs(out, results, counts, info))
    log_metrics(build_loggers(cfg), task.name, metrics, files)
    for method, s in results.items():
        log.info("%s %s: ODS %.3f OIS %.3f AP %.3f R50 %.3f", task.name, method, s.ods, s.ois,
                 s.ap, s.r50)
    log.info("report: %s", files["markdown"])
    return metrics


def run_settings(cfg: DictConfig, dataset) -> dict:
    """What per-image results depend on: a resumed run must have the same (paths to the data
    and the device may change)."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    for key in ("annotation", "image_root"):
        task.pop(key, None)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("device", None)
    return {"task": task, "dataset": dataset.name, "annotation": dataset.annotation.name,
            "images": len(dataset.gt["images"]), "annotations": len(dataset.gt["annotations"]),
            "source": str(cfg.predictions) if cfg.predictions else model,
            "save_predictions": bool(cfg.save_predictions and not cfg.predictions)}


def open_log(cfg: DictConfig, dataset, images: list[dict]):
    """The run folder's per-image log (None with ``resume=false``) and the ids it holds;
    refuses a log with images outside ``images`` (their saved predictions would be cut)."""
    from eval.resume import ResultLog

    if not cfg.resume:
        return None, set()
    results_log = ResultLog(Path(cfg.paths.output_dir) / "per_image.bin",
                            run_settings(cfg, dataset))
    outside = results_log.image_ids - {im["id"] for im in images}
    if outside:
        results_log.close()
        raise ValueError(f"{results_log.path} holds {len(outside)} images outside this run's "
                         f"{len(images)} (max_images={cfg.max_images}): resume with the same or "
                         "a larger selection, or use another run folder")
    return results_log, set(results_log.image_ids)


def prediction_stream(cfg: DictConfig, dataset, todo: list[dict], timing: dict):
    """(record, Prediction) of the ``todo`` images: saved predictions or the model; the model is
    not built when nothing is left to predict."""
    from eval.core import inference_stream, require_coverage
    from eval.report import read_predictions

    if not todo:
        return iter(())
    if cfg.predictions:
        every = {im["id"]: im for im in dataset.gt["images"]}
        wanted = {im["id"] for im in todo}
        return require_coverage(
            read_predictions(cfg.predictions, every, cfg.model.max_det, only=wanted),
            dataset, wanted, cfg.allow_subset, str(cfg.predictions))
    dataset.check_images(todo)  # fail on a missing file before loading the model
    return inference_stream(dataset, build_predictor(cfg.model), todo, cfg.batch_size,
                            cfg.model.max_det, timing, cfg.max_pixels)


def run(cfg: DictConfig) -> dict[str, float]:
    """Build the dataset, evaluator and predictions stream; evaluate (resuming the run folder's
    per-image log); write the report."""
    if cfg.task.kind == "edges":
        return run_edges(cfg)
    from eval.core import evaluate_stream
    from eval.datasets import get_dataset
    from eval.report import PredictionWriter, log_metrics, write_report

    task, out = cfg.task, Path(cfg.paths.output_dir)
    dataset = get_dataset(task.dataset, cfg.paths.data_dir, task.annotation, task.image_root)
    images = dataset.images(cfg.max_images)
    dataset.check_annotated(images)  # recall over no objects would be nan
    sinks, timing = [build_evaluator(task, dataset.gt)], {}
    if cfg.save_predictions and not cfg.predictions:
        sinks.append(PredictionWriter(out / "predictions.jsonl.gz"))
    results_log, done = open_log(cfg, dataset, images)
    try:
        if done:
            log.info("%s: resuming, %d of %d images already evaluated (%s)", task.name,
                     len(done), len(images), results_log.path)
        todo = [im for im in images if im["id"] not in done]
        metrics = evaluate_stream(prediction_stream(cfg, dataset, todo, timing), sinks,
                                  len(todo), cfg.progress, desc=task.name, log=results_log,
                                  replay=done)
    finally:
        if results_log:
            results_log.close()
    info = {"dataset": dataset.name, "annotation": str(dataset.annotation),
            "dataset_images": len(dataset.gt["images"]),
            "source": str(cfg.predictions or cfg.model.weights), "resumed_images": len(done),
            "timing_s": timing, "config": OmegaConf.to_container(cfg, resolve=True)}
    files = write_report(out, task.name, metrics, getattr(sinks[0], "curves", None), info)
    log_metrics(build_loggers(cfg), task.name, metrics, files)
    log.info("%s: %s = %.4f; report: %s", task.name, task.headline,
             metrics.get(task.headline, float("nan")), files["markdown"])
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors("eval"):
        return run(cfg).get(cfg.task.headline)


if __name__ == "__main__":
    main()
