"""The sweep table (fastsam_train.sweeps, data_tools/collect_sweep.py) on hand-made run folders,
and the requeue callback's signal choice (the real-scheduler path is tests/test_slurm_cluster)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastsam_train.sweeps import load_runs, parse_overrides, sweep_table, to_csv, to_markdown
from fastsam_train.train.callbacks import SlurmRequeue

REPO = Path(__file__).resolve().parents[1]


def make_run(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    run = sweep / str(num)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "global_step": 7}))


def test_table_has_the_varied_parameters_and_flags_missing_runs(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["+experiment=fastsam_x", "trainer.max_epochs=1"]
    make_run(sweep, 0, [*common, "model.reg_max=16"], {"val/ar_100": 0.25, "val/loss_seg": 1.5})
    make_run(sweep, 1, [*common, "model.reg_max=26"], {"val/ar_100": 0.5, "val/loss_seg": 1.0})
    make_run(sweep, 10, [*common, "model.reg_max=32"], None)   # failed: no metrics.json
    runs = load_runs(sweep)
    assert [r["run"] for r in runs] == ["0", "1", "10"]          # numeric order
    columns, rows = sweep_table(runs)
    assert columns == ["run", "model.reg_max", "val/ar_100", "val/loss_seg", "global_step",
                       "status"]
    assert rows[0] == ["0", "16", 0.25, 1.5, 7, "done"]
    assert rows[2][:2] == ["10", "32"] and math.isnan(rows[2][2]) and rows[2][-1] == "missing"
    md = to_markdown(columns, rows)
    assert "| 1 | 26 | 0.5000 | 1.0000 | 7 | done |" in md and "| 10 | 32 | — | — | — |" in md
    assert to_csv(columns, rows).splitlines()[3] == "10,32,,,,missing"
    done = subprocess.run([sys.executable, str(REPO / "data_tools" / "collect_sweep.py"),
                           str(sweep)], capture_output=True, text=True)
    assert done.returncode == 1 and "3 runs, 1 missing: 10" in done.stdout  # a pipeline notices
    assert (sweep / "summary.md").read_text() == md


def test_collect_logs_a_wandb_table_offline(tmp_path):
    sweep = tmp_path / "sweep"
    for i, reg in enumerate((16, 26)):
        make_run(sweep, i, [f"model.reg_max={reg}"], {"val/ar_100": 0.1 * (i + 1)})
    done = subprocess.run([sys.executable, str(REPO / "data_tools" / "collect_sweep.py"),
                           str(sweep), "--wandb"], capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stderr[-2000:]
    tables = list(sweep.glob("wandb/offline-run-*/files/media/table/sweep/summary*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["run", "model.reg_max", "val/ar_100"]
    assert [row[1] for row in table["data"]] == ["16", "26"]


def test_bad_sweep_folders_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep folder not found"):
        load_runs(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no runs"):
        load_runs(tmp_path)
    make_run(tmp_path, 0, ["a=1"], None)
    (tmp_path / "0" / "metrics.json").write_text("{truncated")
    with pytest.raises(ValueError, match="0/metrics.json"):
        load_runs(tmp_path)
    assert parse_overrides(["+a=1", "~b", "c=x=y"]) == {"a": "1", "b": "<deleted>", "c": "x=y"}


def test_requeue_signal_follows_the_launcher(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert SlurmRequeue.resolve_signal("auto") == signal.SIGUSR1       # slurm/*.sbatch
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert SlurmRequeue.resolve_signal("auto") == signal.SIGUSR2       # submitit's default
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert SlurmRequeue.resolve_signal("auto") == signal.SIGUSR1
    assert SlurmRequeue.resolve_signal("SIGTERM") == SlurmRequeue.resolve_signal("TERM")


def test_dataloader_workers_ignore_the_requeue_signal():
    from fastsam_train.train.datamodule import ignore_requeue_signal

    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        ignore_requeue_signal(0)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in before)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
