"""Collect a sweep's runs into one table: Markdown (printed and saved), CSV, and wandb.

    python data_tools/collect_sweep.py outputs/ablate_reg_max/multiruns/2026-11-25_10-00-00
    python data_tools/collect_sweep.py <sweep> --metrics val/ar_100 val/box_ar_100 --wandb

Writes ``<sweep>/summary.md`` and ``<sweep>/summary.csv``; columns are the run, every parameter
that differs between runs, the metrics, the final step and the status (``missing`` = no
metrics.json: failed or unfinished). ``--wandb`` logs the table as a wandb Table (offline unless
``--online``). Exit status 1 when a run is missing, so a pipeline notices.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastsam_train.io import atomic_write_text  # noqa: E402
from fastsam_train.sweeps import load_runs, sweep_table, to_csv, to_markdown  # noqa: E402


def log_wandb(sweep: Path, columns: list[str], rows: list[list], online: bool) -> None:
    import wandb

    run = wandb.init(project="fastsam-train", job_type="sweep-summary", name=sweep.name,
                     dir=str(sweep), mode="online" if online else "offline",
                     config={"sweep_dir": str(sweep)})
    run.log({"sweep/summary": wandb.Table(columns=columns,
                                          data=[[str(v) if v is None else v for v in row]
                                                for row in rows])})
    run.finish()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="the multirun folder (holds 0/, 1/, ...)")
    parser.add_argument("--metrics", nargs="+", help="metric keys (default: val AR and losses)")
    parser.add_argument("--wandb", action="store_true", help="also log a wandb Table")
    parser.add_argument("--online", action="store_true", help="wandb online (needs a login)")
    args = parser.parse_args()
    runs = load_runs(args.sweep)
    columns, rows = sweep_table(runs, args.metrics)
    markdown = to_markdown(columns, rows)
    atomic_write_text(args.sweep / "summary.md", markdown)
    atomic_write_text(args.sweep / "summary.csv", to_csv(columns, rows))
    print(markdown, end="")
    missing = [r["run"] for r in runs if r["status"] != "done"]
    print(f"{len(runs)} runs, {len(missing)} missing{': ' + ', '.join(missing) if missing else ''}"
          f"; wrote {args.sweep / 'summary.md'} and summary.csv")
    if args.wandb:
        log_wandb(args.sweep, columns, rows, args.online)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
