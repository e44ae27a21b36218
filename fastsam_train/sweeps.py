"""One table from a Hydra multirun sweep (a SLURM job array or a local sweep).

    runs = load_runs("outputs/ablate_reg_max/multiruns/2026-11-25_10-00-00")
    columns, rows = sweep_table(runs)           # varied parameters first, then metrics
    print(to_markdown(columns, rows))

Each run folder (``<sweep>/<job num>/``) holds Hydra's ``.hydra/overrides.yaml`` and, once the
run finished, ``metrics.json`` (``fastsam_train.train.run.write_summary``). A run without
metrics is listed with status ``missing`` (failed, still running, or requeued), never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import yaml

DEFAULT_METRICS = ("val/ar_100", "val/mask_ar_10", "val/box_ar_100", "val/box_ar_10",
                   "val/loss_seg")


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """Hydra override strings (``key=value``, ``+key=value``, ``~key``) -> {key: value}."""
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        out[key.lstrip("+~")] = value if _ else "<deleted>"
    return out


def _run_order(run_dir: Path) -> tuple:
    """Job numbers numerically (0, 1, ..., 10), then any other folder by name."""
    name = run_dir.name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def load_runs(sweep_dir: str | Path) -> list[dict]:
    """Every run of the sweep, by job number: {``run``, ``dir``, ``params``, ``metrics``,
    ``global_step``, ``status``}. Raises FileNotFoundError when there are no runs at all, and
    ValueError naming a ``metrics.json`` that is not valid JSON."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep}")
    runs = []
    for run_dir in sorted((p.parents[1] for p in sweep.glob("*/.hydra/overrides.yaml")),
                          key=_run_order):
        overrides = run_dir / ".hydra" / "overrides.yaml"
        params = parse_overrides(yaml.safe_load(overrides.read_text()) or [])
        summary, status = {}, "missing"
        metrics_file = run_dir / "metrics.json"
        if metrics_file.is_file():
            try:
                summary, status = json.loads(metrics_file.read_text()), "done"
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics_file} is not valid JSON: {err}") from err
        runs.append({"run": run_dir.name, "dir": str(run_dir), "params": params,
                     "metrics": summary.get("metrics", {}),
                     "global_step": summary.get("global_step"),
                     "restarts": summary.get("slurm_restart_count"), "status": status})
    if not runs:
        raise FileNotFoundError(f"no runs (*/.hydra/overrides.yaml) under {sweep}")
    return runs


def varied_params(runs: list[dict]) -> list[str]:
    """Override keys whose value is not the same in every run, in first-seen order."""
    keys = list(dict.fromkeys(k for r in runs for k in r["params"]))
    return [k for k in keys if len({r["params"].get(k) for r in runs}) > 1]


def sweep_table(runs: list[dict], metrics: list[str] | None = None
                ) -> tuple[list[str], list[list]]:
    """(columns, rows): run, the varied parameters, the metrics (default: those of
    ``DEFAULT_METRICS`` any run has), global step, status."""
    params = varied_params(runs)
    if metrics is None:
        present = {k for r in runs for k in r["metrics"]}
        metrics = [m for m in DEFAULT_METRICS if m in present]
    columns = ["run", *params, *metrics, "global_step", "status"]
    rows = [[r["run"], *(r["params"].get(p, "") for p in params),
             *(r["metrics"].get(m, math.nan) for m in metrics), r["global_step"], r["status"]]
            for r in runs]
    return columns, rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4f}"
    return "—" if value is None else str(value)


def to_markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows([["" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                       for v in row] for row in rows])
    return buf.getvalue()
