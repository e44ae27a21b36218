"""The evaluation run behind ``eval/run.py``: one function per run path, chosen by the task's
config (``task.pipeline._target_``), with the task's evaluator built from ``task.evaluator``
(``_target_``, Hydra's ``instantiate``). Nothing here branches on a task's name or kind.

    metrics = run(cfg)   # cfg: conf/eval.yaml composed with task=<name>

``evaluate_dataset``: a registered dataset's images (COCO / LVIS / BSDS regions) -> the model
(or ``predictions=`` saved predictions) -> the evaluator, resuming the run folder's
``per_image.bin``; ``evaluate_edges``: every edge method of ``task.methods`` over the BSDS
split's images through the same loop (``eval.core``). Both write metrics.json / report.md /
a plot and send the metrics to the configured loggers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from eval.models import build_model, check_model_cfg, describe_model

log = logging.getLogger(__name__)
TASK_BUILDERS = ("pipeline", "evaluator")  # constructor specs in a task: not run settings


def build(spec: DictConfig):
    """``hydra.utils.instantiate(spec)`` for a spec whose ``_target_`` is in this package
    (``eval.``): a config names which of our constructors runs, nothing else."""
    target = str(spec.get("_target_", ""))
    if not target.startswith("eval."):
        raise ValueError(f"_target_ must name a constructor in the eval package, got {target!r}")
    return hydra.utils.instantiate(spec)


def run(cfg: DictConfig) -> dict[str, float]:
    """Check the model config, then run the task's pipeline (``task.pipeline``)."""
    check_model_cfg(cfg.model)
    return build(cfg.task.pipeline)(cfg)


def build_predictor(model_cfg: DictConfig, kind: str = "proposals", detections=None):
    """The one place the model is built (``eval.models.build_model``): FastSAM everything mode
    or SAM, in the mode ``kind`` of the task (``task.kind``: proposals / instance / edges);
    ``detections`` by image id for SAM's box prompts."""
    return build_model(model_cfg, kind, detections)


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


# --- datasets of objects (COCO / LVIS / BSDS regions) ---------------------------------------
def run_settings(cfg: DictConfig, dataset) -> dict:
    """What per-image results depend on: a resumed run must have the same (paths to the data
    and the device may change; the task's constructor specs only restate its keys)."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    for key in ("annotation", "image_root", *TASK_BUILDERS):
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


def prediction_stream(cfg: DictConfig, dataset, todo: list[dict], timing: dict,
                      detections: dict | None = None):
    """(record, Prediction) of the ``todo`` images: saved predictions or the model (prompted
    with ``detections`` if SAM on an instance task); the model is not built when nothing is left
    to predict."""
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
    predictor = build_predictor(cfg.model, cfg.task.kind, detections)
    return inference_stream(dataset, predictor, todo, cfg.batch_size,
                            cfg.model.max_det, timing, max_pixels=cfg.max_pixels)


def evaluate_dataset(cfg: DictConfig) -> dict[str, float]:
    """Build the dataset and the task's evaluator (``task.evaluator`` with the dataset's ``gt``
    and ``model``); evaluate the model's (or saved) predictions, resuming the run folder's
    per-image log; write the report."""
    from eval.core import evaluate_stream
    from eval.datasets import get_dataset
    from eval.report import PredictionWriter, log_metrics, write_report

    task, out = cfg.task, Path(cfg.paths.output_dir)
    options = OmegaConf.to_container(task.gt_options) if task.get("gt_options") else {}
    dataset = get_dataset(task.dataset, cfg.paths.data_dir, task.annotation, task.image_root,
                          **options)
    images = dataset.images(cfg.max_images)
    dataset.check_annotated(images)  # recall over no objects would be nan
    # a partial, called here: instantiate's kwargs would be merged into a config (slow for a gt)
    evaluator = build(task.evaluator)(gt=dataset.gt, model=cfg.model)
    sinks, timing = [evaluator], {}
    if cfg.save_predictions and not cfg.predictions:
        sinks.append(PredictionWriter(out / "predictions.jsonl.gz"))
    results_log, done = open_log(cfg, dataset, images)
    try:
        if done:
            log.info("%s: resuming, %d of %d images already evaluated (%s)", task.name,
                     len(done), len(images), results_log.path)
        todo = [im for im in images if im["id"] not in done]
        stream = prediction_stream(cfg, dataset, todo, timing,
                                   getattr(evaluator, "detections", None))
        metrics = evaluate_stream(stream, sinks, len(todo), cfg.progress, desc=task.name,
                                  log=results_log, replay=done)
    finally:
        if results_log:
            results_log.close()
    source = str(cfg.predictions) if cfg.predictions else describe_model(cfg.model)["weights"]
    rows = evaluator.report_rows() if hasattr(evaluator, "report_rows") else None
    info = {"dataset": dataset.name, "annotation": str(dataset.annotation),
            "dataset_images": len(dataset.gt["images"]), "source": source,
            "resumed_images": len(done), **describe_model(cfg.model), "rows": rows,
            "timing_s": timing, "config": OmegaConf.to_container(cfg, resolve=True)}
    files = write_report(out, task.name, metrics, getattr(evaluator, "curves", None), info)
    log_metrics(build_loggers(cfg), task.name, metrics, files)
    log.info("%s: %s = %.4f; report: %s", task.name, task.headline,
             metrics.get(task.headline, float("nan")), files["markdown"])
    return metrics


# --- BSDS500 edges ----------------------------------------------------------------------------
def edge_methods(cfg: DictConfig) -> list[str]:
    """``task.methods`` with ``model`` (or ``fastsam`` / ``sam``) as the configured model's name;
    ValueError on an unknown or empty list."""
    from eval.edges import ClassicalEdges

    aliases = {"model", "fastsam", "sam"}
    methods = [cfg.model.name if m in aliases else m for m in cfg.task.methods]
    if set(methods) - {cfg.model.name, *ClassicalEdges.FUNCTIONS} or not methods:
        raise ValueError(f"task.methods must name model (or {cfg.model.name}) / sobel / canny, "
                         f"got {list(cfg.task.methods)}")
    return methods


def edge_predictor(cfg: DictConfig, method: str):
    """The model's mask edges (``task.nms``) or a classical baseline (``task.baselines``)."""
    from eval.edges import ClassicalEdges, MaskEdges

    if method == cfg.model.name:
        return MaskEdges(build_predictor(cfg.model, cfg.task.kind), cfg.task.nms)
    return ClassicalEdges(method, **cfg.task.baselines[method])


def evaluate_edges(cfg: DictConfig) -> dict[str, float]:
    """BSDS500 edges: every method of ``task.methods`` through the same loop, each scored by a
    ``task.evaluator`` (``BoundaryEvaluator``) beside an ``EdgeMapWriter``; edge PNGs, BSR
    files, metrics.json, report.md and pr_curve.png in the run directory."""
    from eval.core import evaluate_stream, inference_stream
    from eval.datasets import get_dataset
    from eval.edges import EdgeMapWriter, edge_map, write_outputs
    from eval.report import log_metrics

    task, out = cfg.task, Path(cfg.paths.output_dir)
    dataset = get_dataset(task.dataset, cfg.paths.data_dir, None, task.image_dir,
                          gt_dir=task.gt_dir, boundaries=True)
    records = dataset.images(cfg.max_images)
    methods = edge_methods(cfg)
    results, counts, metrics, files = {}, {}, {"images": float(len(records))}, {}
    for method in methods:
        evaluator, edges_dir = build(task.evaluator), out / "edges" / method
        stream = inference_stream(dataset, edge_predictor(cfg, method), records,
                                  cfg.batch_size, None, None, max_pixels=cfg.max_pixels,
                                  convert=edge_map)
        evaluate_stream(stream, [evaluator, EdgeMapWriter(edges_dir)], len(records),
                        cfg.progress, desc=f"{task.name}:{method}")
        results[method], counts[method] = evaluator.scores, evaluator.counts
        metrics.update(evaluator.scores.metrics(method))
        files.update({f"{method}_{r['id']}": edges_dir / f"{r['id']}.png"
                      for r in records[:task.logged_maps]})
    info = {"images": len(records), "dataset": task.dataset,
            "image_dir": str(dataset.image_root), "gt_dir": str(dataset.annotation),
            "nthresh": task.nthresh, "max_dist": task.max_dist, "exact": task.exact,
            **(describe_model(cfg.model) if cfg.model.name in methods else {}),
            "config": OmegaConf.to_container(cfg, resolve=True)}
    files.update(write_outputs(out, results, counts, info))
    log_metrics(build_loggers(cfg), task.name, metrics, files)
    for method, s in results.items():
        log.info("%s %s: ODS %.3f OIS %.3f AP %.3f R50 %.3f", task.name, method, s.ods, s.ois,
                 s.ap, s.r50)
    log.info("report: %s", files["markdown"])
    return metrics
