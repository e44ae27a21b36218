"""Evaluate a finished training run as its experiment asks (``final_eval`` in the train config):
every task for the trained weights and, beside them, the same model at its initial weights;
then one summary table and one PR-curve figure for the whole run.

    python train.py +experiment=bsds_mini      # trains, then runs this (conf: final_eval)

Each evaluation is an ordinary ``eval/run.py`` run (``eval.pipeline.run`` on the composed
``conf/eval.yaml``) writing into ``<run>/eval/<task>_<model>/``; the summary reads their
``metrics.json`` and BSR per-image files, so it can be rebuilt from a finished run with
``summarize_run(<run>/eval)``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from eval.bsds import plot_pr_curves, read_counts, summarize
from fastsam_train.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = {"trained": "checkpoints/last.ckpt", "untrained": "weights/untrained.pt"}
LABELS = {"sobel": "Sobel", "canny": "Canny"}


def compose_eval(overrides: list[str]) -> DictConfig:
    """``conf/eval.yaml`` with ``overrides`` (inside a Hydra app or not)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("eval", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=overrides)


def evaluate_run(run_dir: str | Path, tasks: dict[str, list[str]], baselines: list[str],
                 untrained: bool, overrides: list[str],
                 edge_conf: dict | None = None) -> dict[str, dict[str, float]]:
    """Run every task on the run's weights; returns ``{"<task>_<model>": metrics}``.

    ``tasks``: task name -> its own Hydra overrides. ``baselines``: classical edge methods
    added to the trained model's ``bsds_edges`` run. ``untrained``: also evaluate
    ``weights/untrained.pt`` (written before training). ``overrides``: Hydra overrides for
    every evaluation (e.g. ``model.imgsz=320``). ``edge_conf``: ``{candidates, shards, root}``
    to choose ``bsds_edges``' score threshold on the conversion's held-out images first
    (``select_edge_conf``); None keeps the task's own.
    """
    from eval.pipeline import run

    run_dir = Path(run_dir)
    models = {k: run_dir / v for k, v in MODELS.items() if k == "trained" or untrained}
    tasks = {t: list(o) for t, o in tasks.items()}
    if edge_conf and "bsds_edges" in tasks:
        conf = select_edge_conf(run_dir, models["trained"], Path(edge_conf["shards"]),
                                edge_conf["root"], list(edge_conf["candidates"]),
                                [*overrides, *tasks["bsds_edges"]])
        tasks["bsds_edges"].append(f"model.conf={conf}")
    results = {}
    for model, weights in models.items():
        for task, task_overrides in tasks.items():
            name = f"{task}_{model}"
            extra = [f"task.methods=[{','.join(['fastsam', *baselines])}]"] \
                if task == "bsds_edges" and model == "trained" else \
                ["task.methods=[fastsam]"] if task == "bsds_edges" else []
            cfg = compose_eval([f"task={task}", f"model.weights={weights}",
                                f"paths.output_dir={run_dir / 'eval' / name}", *overrides,
                                *task_overrides, *extra])
            log.info("evaluating %s: %s on %s", name, task, weights)
            results[name] = run(cfg)
    summarize_run(run_dir / "eval")
    return results


def heldout_split(shards: Path, root: str | Path, out: Path) -> tuple[Path, Path]:
    """(image folder, groundTruth folder) of the BSDS images a conversion held out
    (``manifest.json`` ids of its ``val`` split), linked into ``out``; ValueError if the
    shards are not a BSDS conversion or hold no held-out image."""
    from fastsam_train.data.bsds import split_dirs

    manifest = json.loads((shards / "manifest.json").read_text())
    source = manifest["config"]["input"]
    if source.get("type") != "bsds" or not manifest["ids"]["val"]:
        raise ValueError(f"{shards}: not a BSDS conversion with held-out images")
    images, gts = out / "images", out / "groundTruth"
    for folder in (images, gts):
        folder.mkdir(parents=True, exist_ok=True)
    for key in manifest["ids"]["val"]:
        image_id = key.removeprefix("bsds_").split("_a")[0]
        for split in source["splits"]:
            image_dir, gt_dir = split_dirs(root, split)
            if (gt_dir / f"{image_id}.mat").is_file():
                for src, dst in ((image_dir / f"{image_id}.jpg", images),
                                 (gt_dir / f"{image_id}.mat", gts)):
                    if not (dst / src.name).exists():
                        (dst / src.name).symlink_to(src.resolve())
    return images, gts


def select_edge_conf(run_dir: Path, weights: Path, shards: Path, root: str | Path,
                     candidates: list[float], overrides: list[str]) -> float:
    """The score threshold of ``candidates`` with the best edge ODS on the images the
    conversion held out from training (never the test set); ties go to the higher threshold.
    FastSAM's own 0.4 assumes its score scale: a short-trained model may score every mask
    lower. Writes ``<run>/eval/edge_conf.json``."""
    from eval.pipeline import run

    held = heldout_split(shards, root, run_dir / "eval" / "heldout")
    ods = {}
    for conf in candidates:
        cfg = compose_eval(["task=bsds_edges", f"model.weights={weights}", *overrides,
                            f"task.image_dir={held[0]}", f"task.gt_dir={held[1]}",
                            "task.methods=[fastsam]", f"model.conf={conf}",
                            f"paths.output_dir={run_dir / 'eval' / 'heldout' / f'conf_{conf}'}"])
        ods[conf] = run(cfg)["fastsam/ods"]
    best = max(candidates, key=lambda c: (ods[c], c))
    atomic_write_json(run_dir / "eval" / "edge_conf.json",
                      {"images": len(list(held[1].glob("*.mat"))),
                       "ods": {str(c): v for c, v in ods.items()}, "chosen": best}, indent=2)
    log.info("bsds_edges score threshold %s (held-out ODS %s)", best, ods)
    return best


def summarize_run(eval_dir: str | Path) -> dict[str, Path]:
    """``summary.md`` / ``summary.json`` (edges ODS/OIS/AP/R50 and mask/box AR per model) and
    ``pr_curve.png`` (every model's and baseline's PR curve) from the runs under ``eval_dir``."""
    eval_dir = Path(eval_dir)
    rows: dict[str, dict[str, float | None]] = {}
    curves = {}
    for model in MODELS:
        edges = eval_dir / f"bsds_edges_{model}"
        for method_dir in sorted((edges / "bsr").glob("*")) if edges.is_dir() else []:
            label = f"{model} model" if method_dir.name == "fastsam" else \
                LABELS.get(method_dir.name, method_dir.name)
            scores = summarize([read_counts(p) for p in sorted(method_dir.glob("*_ev1.txt"))])
            curves[label] = scores
            rows.setdefault(label, {}).update(
                {k: float(getattr(scores, k)) for k in ("ods", "ois", "ap", "r50")})
        ar = eval_dir / f"bsds_ar_{model}" / "metrics.json"
        if ar.is_file():
            metrics = json.loads(ar.read_text())["metrics"]
            rows.setdefault(f"{model} model", {}).update(
                {k: metrics.get(k) for k in ("mask/ar_10", "mask/ar_100", "box/ar_100")})
    if not rows:
        raise FileNotFoundError(f"no bsds_edges_* / bsds_ar_* results under {eval_dir}")
    models = [f"{m} model" for m in MODELS if f"{m} model" in rows]  # models first
    rows = {name: rows[name] for name in [*models, *sorted(set(rows) - set(models))]}
    paths = {"markdown": eval_dir / "summary.md", "json": eval_dir / "summary.json"}
    atomic_write_json(paths["json"], rows, indent=2)
    atomic_write_text(paths["markdown"], summary_table(rows))
    if curves:
        paths["plot"] = plot_pr_curves(curves, eval_dir / "pr_curve.png",
                                       title="BSDS500 test: edges")
    log.info("summary of the run:\n%s", paths["markdown"].read_text())
    return paths


def summary_table(rows: dict[str, dict[str, float | None]]) -> str:
    """Markdown: one row per model / baseline, edges then AR columns (— where not measured)."""
    cols = [("ODS", "ods"), ("OIS", "ois"), ("AP", "ap"), ("R50", "r50"),
            ("mask AR@10", "mask/ar_10"), ("mask AR@100", "mask/ar_100"),
            ("box AR@100", "box/ar_100")]

    def cell(v) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["| BSDS500 test | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(cell(vals.get(k)) for _, k in cols) + " |"
              for name, vals in rows.items()]
    return "\n".join(lines) + "\n"
