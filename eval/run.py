"""Evaluate FastSAM on COCO / LVIS: ``python eval/run.py task=coco_ar model.weights=...``.

Tasks: ``coco_ar`` / ``lvis_ar`` / ``bsds_ar`` (class-agnostic proposals), ``coco_instance`` /
``lvis_instance`` (detector boxes as prompts, ``task.detections=<results.json>``),
``bsds_edges`` (BSDS500 zero-shot edges, with Sobel / Canny rows; see eval/edges.py).
``predictions=<run>/predictions.jsonl.gz`` re-evaluates saved predictions without the model.
Writes ``metrics.json``, ``report.md``, ``ar_curve.png`` and ``predictions.jsonl.gz`` to the
Hydra run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the `eval` package, not its modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

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


def build_evaluator(task: DictConfig, gt: dict, engine: str):
    if task.kind == "proposals":
        from eval.proposals import ProposalEvaluator

        return ProposalEvaluator(gt, list(task.iou_types), list(task.max_dets),
                                 task.frequency_groups, task.box_source, engine)
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
        evaluate_stream(edge_stream(records, predictor, cfg.batch_size),
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


def run(cfg: DictConfig) -> dict[str, float]:
    """Build the dataset, evaluator and predictions stream; evaluate; write the report."""
    if cfg.task.kind == "edges":
        return run_edges(cfg)
    from eval.core import evaluate_stream, inference_stream
    from eval.datasets import get_dataset
    from eval.report import PredictionWriter, log_metrics, read_predictions, write_report

    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # its INFO per COCOeval
    task, out = cfg.task, Path(cfg.paths.output_dir)
    options = OmegaConf.to_container(task.gt_options) if task.get("gt_options") else {}
    dataset = get_dataset(task.dataset, cfg.paths.data_dir, task.annotation, task.image_root,
                          **options)
    images = dataset.images(cfg.max_images)
    evaluator = build_evaluator(task, dataset.gt, cfg.engine)
    sinks, timing = [evaluator], {}
    if cfg.predictions:
        every = {im["id"]: im for im in dataset.gt["images"]}
        stream = read_predictions(cfg.predictions, every, cfg.model.max_det,
                                  only={im["id"] for im in images})
        source = str(cfg.predictions)
    else:
        dataset.check_images(images)  # fail on a missing file before loading the model
        predictor = build_predictor(cfg.model)
        stream = inference_stream(dataset, predictor, images, cfg.batch_size, cfg.model.max_det,
                                  timing)
        source = str(cfg.model.weights)
        if cfg.save_predictions:
            sinks.append(PredictionWriter(out / "predictions.jsonl.gz"))
    metrics = evaluate_stream(stream, sinks, len(images), cfg.progress, desc=task.name)
    info = {"dataset": dataset.name, "annotation": str(dataset.annotation),
            "dataset_images": len(dataset.gt["images"]), "source": source,
            "timing_s": timing, "config": OmegaConf.to_container(cfg, resolve=True)}
    files = write_report(out, task.name, metrics, getattr(evaluator, "curves", None), info)
    log_metrics(build_loggers(cfg), task.name, metrics, files)
    log.info("%s: %s = %.4f; report: %s", task.name, task.headline,
             metrics.get(task.headline, float("nan")), files["markdown"])
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run(cfg).get(cfg.task.headline)


if __name__ == "__main__":
    main()
