"""Evaluate FastSAM (or SAM) on COCO / LVIS / BSDS500: ``python eval/run.py task=coco_ar
model.weights=...`` (``model=sam model.checkpoint=... model.type=vit_h`` for SAM).

Tasks: ``coco_ar`` / ``lvis_ar`` / ``bsds_ar`` (class-agnostic proposals), ``coco_instance`` /
``lvis_instance`` (detector boxes as prompts, ``task.detections=<results.json>``),
``bsds_edges`` (BSDS500 zero-shot edges, with Sobel / Canny rows; see eval/edges.py). Models:
``conf/model/fastsam.yaml`` (default; ``model.mask_protocol=official`` unless changed) and
``conf/model/sam.yaml`` (eval/sam.py), checked before any work.
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


def build_predictor(model_cfg: DictConfig, kind: str = "proposals", detections=None):
    """The one place the model is built (``eval.models.build_model``): FastSAM everything mode
    or SAM, for a task of ``kind``; ``detections`` by image id for SAM's box prompts."""
    from eval.models import build_model

    return build_model(model_cfg, kind, detections)


def instance_pools(cfg: DictConfig) -> dict[str, dict]:
    """The instance task's pools, each checked to be reachable from the model's own run."""
    pools = OmegaConf.to_container(cfg.task.pools, resolve=True) if cfg.task.get("pools") \
        else {"all": {"conf": cfg.model.conf, "max_det": cfg.model.max_det}}
    for name, pool in pools.items():
        if pool["conf"] < cfg.model.conf or pool["max_det"] > cfg.model.max_det:
            raise ValueError(
                f"task.pools.{name} (conf {pool['conf']}, max_det {pool['max_det']}) is not "
                f"inside the model's run (model.conf {cfg.model.conf}, model.max_det "
                f"{cfg.model.max_det}): lower model.conf / raise model.max_det")
    return pools


def build_evaluator(task: DictConfig, gt: dict, detections=None, pools: dict | None = None,
                    prompted: bool = False):
    if task.kind == "proposals":
        from eval.proposals import ProposalEvaluator

        return ProposalEvaluator(gt, list(task.iou_types), list(task.max_dets),
                                 task.frequency_groups, task.box_source)
    if task.kind == "instance":
        from eval.instance import InstanceEvaluator

        return InstanceEvaluator(gt, task.detections if detections is None else detections,
                                 task.api, task.get("max_dets", 300), pools, prompted)
    raise ValueError(f"task.kind must be 'proposals' or 'instance', got {task.kind!r}")


def report_rows(task: DictConfig, model: DictConfig, pools: dict | None) -> list | None:
    """Our rows in report.md for an instance task: one per pool (or SAM's box prompts)."""
    if task.kind != "instance":
        return None
    from eval.instance import pool_prefix

    if model.name == "sam":
        return [("SAM (ours, box prompts)", "mask")]
    return [(f"FastSAM (ours, {name} pool: conf {p['conf']:g}, <= {p['max_det']} masks)",
             pool_prefix(name, i == 0)) for i, (name, p) in enumerate(pools.items())]


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
    edge PNGs, BSR files, metrics.json, report.md and pr_curve.png in the run directory.
    ``model`` (or its name) in the methods is the configured model, FastSAM or SAM."""
    from eval.core import evaluate_stream
    from eval.edges import (
        BoundaryEvaluator,
        ClassicalEdges,
        EdgeMapWriter,
        MaskEdges,
        bsds_folders,
        bsds_records,
        edge_stream,
        write_outputs,
    )
    from eval.models import describe_model
    from eval.report import log_metrics

    task, out = cfg.task, Path(cfg.paths.output_dir)
    image_dir, gt_dir = bsds_folders(task.dataset, cfg.paths.data_dir, task.image_dir,
                                     task.gt_dir)
    records = bsds_records(image_dir, gt_dir, cfg.max_images)
    model_aliases = {"model", "fastsam", "sam"}
    methods = [cfg.model.name if m in model_aliases else m for m in task.methods]
    unknown = set(methods) - {cfg.model.name, *ClassicalEdges.FUNCTIONS}
    if unknown or not methods:
        raise ValueError(f"task.methods must name model (or {cfg.model.name}) / sobel / canny, "
                         f"got {list(task.methods)}")
    results, counts, metrics, files = {}, {}, {"images": float(len(records))}, {}
    for method in methods:
        if method == cfg.model.name:
            predictor = MaskEdges(build_predictor(cfg.model, "edges"), task.nms)
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
            **(describe_model(cfg.model) if cfg.model.name in methods else {}),
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
                            cfg.model.max_det, timing, cfg.max_pixels)


def run(cfg: DictConfig) -> dict[str, float]:
    """Check the model config; build the dataset, evaluator and predictions stream; evaluate
    (resuming the run folder's per-image log); write the report."""
    from eval.models import check_model_cfg, describe_model

    check_model_cfg(cfg.model)
    if cfg.task.kind == "edges":
        return run_edges(cfg)
    from eval.core import evaluate_stream
    from eval.datasets import get_dataset
    from eval.report import PredictionWriter, log_metrics, write_report

    task, out = cfg.task, Path(cfg.paths.output_dir)
    sam = cfg.model.name == "sam"
    pools = instance_pools(cfg) if task.kind == "instance" and not sam else None
    options = OmegaConf.to_container(task.gt_options) if task.get("gt_options") else {}
    dataset = get_dataset(task.dataset, cfg.paths.data_dir, task.annotation, task.image_root,
                          **options)
    images = dataset.images(cfg.max_images)
    dataset.check_annotated(images)  # recall over no objects would be nan
    detections = None
    if task.kind == "instance":
        from eval.instance import load_detections

        detections = load_detections(task.detections, dataset.gt)
    evaluator = build_evaluator(task, dataset.gt, detections, pools,
                                prompted=sam and task.kind == "instance")
    sinks, timing = [evaluator], {}
    if cfg.save_predictions and not cfg.predictions:
        sinks.append(PredictionWriter(out / "predictions.jsonl.gz"))
    results_log, done = open_log(cfg, dataset, images)
    try:
        if done:
            log.info("%s: resuming, %d of %d images already evaluated (%s)", task.name,
                     len(done), len(images), results_log.path)
        todo = [im for im in images if im["id"] not in done]
        stream = prediction_stream(cfg, dataset, todo, timing, detections)
        metrics = evaluate_stream(stream, sinks, len(todo), cfg.progress, desc=task.name,
                                  log=results_log, replay=done)
    finally:
        if results_log:
            results_log.close()
    source = str(cfg.predictions) if cfg.predictions else describe_model(cfg.model)["weights"]
    info = {"dataset": dataset.name, "annotation": str(dataset.annotation),
            "dataset_images": len(dataset.gt["images"]), "source": source,
            "resumed_images": len(done), **describe_model(cfg.model),
            "rows": report_rows(task, cfg.model, pools),
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
