"""The real-image mini reproduction (``+experiment=bsds_mini``) end to end on a handful of BSDS
images: conversion on first use (only into its own folder), two epochs, then the evaluation
on test (edges with the baselines, mask AR, trained vs untrained) and the run's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from helpers import bsds_subset, compose_config

REPO = Path(__file__).resolve().parents[1]


def test_bsds_mini_two_epochs_then_evaluation(shared_data, tmp_path):
    root = bsds_subset(shared_data, tmp_path / "data", {"train": 6, "val": 3, "test": 2})
    run, shards = tmp_path / "run", tmp_path / "shards"
    evals = [f"paths.data_dir={root}", "model.imgsz=128", "max_images=2", "progress=false"]
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "+experiment=bsds_mini",
                    f"hydra.run.dir={run}", f"paths.data_dir={root}",
                    f"data.auto_convert.output={shards}", "data.auto_convert.val_fraction=0.3",
                    "data.imgsz=128", "data.batch_size=4", "data.num_workers=1",
                    "trainer.max_epochs=2", "~callbacks.progress",
                    "final_eval.overrides=[" + ",".join(f'"{o}"' for o in evals) + "]",
                    'final_eval.tasks.bsds_edges=["task.nthresh=9","task.workers=1"]',
                    "final_eval.edge_conf.candidates=[0.4,0.01]"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["config"]["input"] == {"type": "bsds", "splits": ["train", "val"],
                                           "annotator": "median"}
    assert sum(manifest["samples"].values()) == 9 and manifest["samples"]["val"] >= 1
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["epoch"] == 2 and "val/mask_ar_100" in summary["metrics"]
    untrained = torch.load(run / "weights" / "untrained.pt", weights_only=True)
    assert untrained["config"]["scale"] == "n"
    rows = json.loads((run / "eval" / "summary.json").read_text())
    assert set(rows) == {"trained model", "untrained model", "Sobel", "Canny"}
    for name in ("trained model", "untrained model"):
        assert set(rows[name]) >= {"ods", "ois", "ap", "r50", "mask/ar_10", "mask/ar_100"}
        assert 0 <= rows[name]["mask/ar_100"] <= 1
    assert 0.2 < rows["Canny"]["ods"] < 1 and "mask/ar_100" not in rows["Sobel"]
    ar = json.loads((run / "eval" / "bsds_ar_trained" / "metrics.json").read_text())
    assert ar["metrics"]["images"] == 2 and ar["dataset"] == "bsds500_test"
    assert (run / "eval" / "pr_curve.png").stat().st_size > 10_000
    chosen = json.loads((run / "eval" / "edge_conf.json").read_text())
    assert chosen["images"] == manifest["samples"]["val"] and set(chosen["ods"]) == {"0.4",
                                                                                     "0.01"}
    edges = json.loads((run / "eval" / "bsds_edges_trained" / "metrics.json").read_text())
    assert edges["config"]["model"]["conf"] == chosen["chosen"]
    assert "| Canny |" in (run / "eval" / "summary.md").read_text()


def test_auto_conversion_only_fills_its_own_folder(tmp_path):
    cfg = compose_config("train", "+experiment=bsds_mini", f"paths.data_dir={tmp_path}",
                         f"data.auto_convert.output={tmp_path / 'own'}",
                         f"data.shards={tmp_path / 'typo'}", f"paths.output_dir={tmp_path / 'run'}")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    with pytest.raises(FileNotFoundError, match="typo"):
        datamodule.setup()
    assert not (tmp_path / "typo").exists() and not (tmp_path / "own").exists()
