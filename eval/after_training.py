"""Evaluate a finished training run as its experiment asks (``final_eval`` in the train config):
every task for the trained weights and, beside them, the same model at its initial weights;
then one summary table and one PR-curve figure for the whole run.

    python train.py +experiment=bsds_mini      # trains, then runs this (conf: final_eval)

Each evaluation is an ordinary ``eval/run.py`` run (``eval.run.run`` on the composed
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
                 untrained: bool, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Run every task on the run's weights; returns ``{"<task>_<model>": metrics}``.

    ``tasks``: task name -> its own Hydra overrides. ``baselines``: classical edge methods
    added to the trained model's ``bsds_edges`` run. ``untrained``: also evaluate
    ``weights/untrained.pt`` (written before training). ``overrides``: Hydra overrides for
    every evaluation (e.g. ``model.imgsz=320``).
    """
    from eval.run import run

    run_dir = Path(run_dir)
    models = {k: run_dir / v for k, v in MODELS.items() if k == "trained" or untrained}
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
    paths["json"].write_text(json.dumps(rows, indent=2))
    paths["markdown"].write_text(summary_table(rows))
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
