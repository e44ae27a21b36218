"""Training end to end on demo shards: it learns, exports, resumes after kill -9, runs DDP."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config

from fastsam_train import ultra
from fastsam_train.data.shards import ShardWriter, iter_shard
from fastsam_train.train.module import FastSAMModule
from fastsam_train.train.run import train

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.imgsz=128", "data.batch_size=4", "data.make_demo.images_per_tar=24",
         "~callbacks.progress"]


def compose_train(out: Path, *overrides: str):
    return compose_config("train", f"paths.output_dir={out}",
                          f"data.make_demo.shards={out.parent / 'demo' / 'shards'}", *overrides)


def val_rows(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        rows += [r for r in csv.DictReader(path.open()) if r.get("val/ar_100")]
    return rows


def run_cli(run_dir: Path, *overrides: str, wait: bool = True):
    args = [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}",
            f"data.make_demo.shards={run_dir.parent / 'demo' / 'shards'}", *SMALL, *overrides]
    if not wait:
        return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True)


def test_demo_training_learns_and_exports(tmp_path):
    """The default CPU demo: held-out mask AR@100 goes from 0.000 (epoch 0) to 0.083 after 12
    epochs (measured here); the floor is 0.05. The EMA export loads and predicts in
    ultralytics."""
    out = tmp_path / "run"
    metrics = train(compose_train(out, "~callbacks.progress", "logger=wandb",
                                  "logger.wandb.offline=true"))
    rows = val_rows(out)
    first, last = float(rows[0]["val/ar_100"]), metrics["val/ar_100"]
    assert len(rows) == 12 and first < 0.01 and last >= 0.05, (first, last)
    assert any(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(list((out / "overlays").glob("*.png"))) == 12
    from ultralytics import YOLO

    yolo = YOLO(str(out / "weights" / "last.pt"))
    assert yolo.model.model[-1].reg_max == 26
    image = np.full((256, 256, 3), 127, np.uint8)
    result = yolo.predict(image, imgsz=256, device="cpu", verbose=False)[0]
    assert result.boxes.data.shape[1] == 6 and result.orig_shape == (256, 256)
    model = ultra.build_model("n", nc=1, reg_max=26)
    report = ultra.import_ultralytics_checkpoint(out / "weights" / "last.pt", model,
                                                 allow_pickle=True)
    assert not report.missing and not report.mismatched
    # ultralytics' own model from the file and ours from the same file compute the same outputs
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        theirs, ours = yolo.model.float().eval()(x)[0], model.eval()(x)[0]
    torch.testing.assert_close(theirs[0], ours[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(theirs[1], ours[1], rtol=1e-4, atol=1e-4)


def checkpoint_state(path: Path):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # being replaced right now
        return None
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    return ckpt["epoch"], progress["is_last_batch"]


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    common = ["trainer.max_epochs=3", "callbacks.last.every_n_train_steps=2"]
    run_cli(tmp_path / "a", *common)
    proc = run_cli(tmp_path / "b", *common, wait=False)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    seen, killed_at = None, None
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if last.exists() and last.stat().st_mtime != seen:
            seen = last.stat().st_mtime
            state = checkpoint_state(last)
            if state and state[0] >= 1 and not state[1]:  # mid-epoch, epoch >= 1
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = state
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run ended before a mid-epoch checkpoint was seen"
    run_cli(tmp_path / "b", *common, "ckpt_path=last")
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False) for d in "ab")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"] == 2
    assert a["ema"]["updates"] == b["ema"]["updates"]
    loss_a, loss_b = (float(val_rows(tmp_path / d)[-1]["val/loss_seg"]) for d in "ab")
    assert abs(loss_a - loss_b) / loss_a < 0.05


def test_ddp_two_cpu_processes(tmp_path):
    run_cli(tmp_path / "ddp", "trainer=ddp_sim", "trainer.max_epochs=1", "data.num_workers=1")
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    sizes = (tmp_path / "demo" / "shards" / "train" / "sizes.json").read_text()
    total = sum(__import__("json").loads(sizes).values())
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == \
        total // (2 * 4)
    val_total = sum(__import__("json").loads(
        (tmp_path / "demo" / "shards" / "val" / "sizes.json").read_text()).values())
    assert float(val_rows(tmp_path / "ddp")[-1]["val/images"]) == val_total


@pytest.mark.parametrize("experiment", ["fastsam_x", "fastsam_s", "demo_cpu"])
def test_every_experiment_runs_one_batch(tmp_path, experiment, monkeypatch):
    """One training and one validation batch of each experiment (scaled down, on the CPU) with
    its own loss and schedule: a finite loss from every term, one optimizer step."""
    seen = {}
    original = FastSAMModule.on_fit_start

    def spy(self):
        original(self)
        seen["module"] = self

    monkeypatch.setattr(FastSAMModule, "on_fit_start", spy)
    cfg = compose_train(tmp_path / "run", f"+experiment={experiment}", "debug=fdr",
                        "trainer=cpu", "logger=csv", "data=demo", "data.imgsz=64",
                        "data.batch_size=2", "data.num_workers=0", *SMALL[2:])
    metrics = train(cfg)
    parts = [metrics[f"train/loss_{k}"] for k in ultra.LOSS_NAMES]
    assert all(np.isfinite(parts)) and metrics["train/loss"] > 0
    assert metrics["train/loss"] == pytest.approx(sum(parts), rel=1e-5)
    assert np.isfinite(metrics["val/loss_seg"])
    module = seen["module"]
    rule = "v8_0_120" if experiment.startswith("fastsam") else "v8_4"
    # fast_dev_run is one epoch: 8.4 has no warmup then (the last epoch never warms up), so the
    # demo accumulates nbs 8 / batch 2 = 4 batches before a step; 8.0.120 warms up >= 100
    # batches, starting at one batch per step
    steps = 1 if rule == "v8_0_120" else 0
    assert module.ema.updates == steps and module.last_opt_step == steps - 1
    assert module.hyp.loss_rule == module.hyp.augment_rule == rule
    assert module.model.model[-1].reg_max == 26
    # debug=fdr is a dry run (conf/debug/fdr.yaml): no checkpoint, summary or export written
    run = tmp_path / "run"
    assert not list(run.rglob("*.ckpt")) and not (run / "metrics.json").exists()
    assert not (run / "weights").exists()


def nan_loss(model, rule="v8_4"):
    def loss_fn(preds, batch):
        zero = sum(p.sum() for p in model.parameters()) * 0
        return zero + float("nan"), {k: torch.tensor(0.0) for k in ultra.LOSS_NAMES}
    return loss_fn


def test_nonfinite_loss_stops_with_the_batch_or_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(ultra, "build_loss", nan_loss)
    base = [*SMALL, "trainer.max_epochs=1", "data.num_workers=0", "export=false"]
    with pytest.raises(FloatingPointError, match=r"batch 0 \(samples \[.sa_"):
        train(compose_train(tmp_path / "stop", *base))
    metrics = train(compose_train(tmp_path / "skip", *base, "on_nonfinite=skip"))
    assert metrics["train/nonfinite_skipped"] >= 1


def test_missing_shards_fail_clearly(tmp_path):
    cfg = compose_train(tmp_path / "run", f"data.shards={tmp_path / 'nothing'}",
                        "data.make_demo=null", "~callbacks.progress")
    with pytest.raises(FileNotFoundError, match="no train shards"):
        train(cfg)
    cfg = compose_train(tmp_path / "run", "ckpt_path=last", *SMALL)
    with pytest.raises(FileNotFoundError, match="checkpoint to resume"):
        train(cfg)


def tree(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("layout", ["mistyped", "empty_beside_sa1b"])
def test_wrong_shard_path_never_builds_or_converts(tmp_path, layout):
    """With data=demo, a shard path other than the demo's own folder fails at once, naming
    it, even with real-looking SA-1B tars in <shards>/../sa1b: nothing built or converted."""
    from fastsam_train.data.demo import make_demo_sa1b

    data = tmp_path / "data"
    shards = data / ("shrads" if layout == "mistyped" else "shards")
    if layout == "empty_beside_sa1b":
        shards.mkdir(parents=True)
        make_demo_sa1b(data / "sa1b", num_tars=2, images_per_tar=2, height=64, width=64)
    before = tree(tmp_path)
    cfg = compose_train(tmp_path / "run", f"data.shards={shards}", "~callbacks.progress")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no train shards at {shards}/train")
                       + ".*demo data is built only at data.make_demo.shards="):
        train(cfg)
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("run")} == before


def test_training_reads_shards_over_http(demo_shards, http_folder, tmp_path):
    """data.shards as a URL: sizes.json and every shard fetched from a local HTTP server."""
    url, requests = http_folder(demo_shards)
    metrics = train(compose_train(tmp_path / "run", f"data.shards={url}", "data.make_demo=null",
                                  "data.imgsz=64", "data.batch_size=2", "trainer.max_epochs=1",
                                  "export=false", "~callbacks.progress"))
    assert np.isfinite(metrics["train/loss"]) and "val/ar_100" in metrics
    names = {split: json.loads((demo_shards / split / "sizes.json").read_text())
             for split in ("train", "val")}
    assert {f"/{s}/{n}" for s in names for n in names[s]} <= set(requests)
    assert {"/train/sizes.json", "/val/sizes.json"} <= set(requests)


def bad_dataset(demo_shards: Path, out: Path, kind: str) -> Path:
    """``demo_shards`` with every label NaN (``kind="nan"``) or every shard random bytes."""
    for split in ("train", "val"):
        (out / split).mkdir(parents=True)
        shutil.copy(demo_shards / split / "sizes.json", out / split / "sizes.json")
        for i, name in enumerate(json.loads((out / split / "sizes.json").read_text())):
            if kind == "garbage":
                (out / split / name).write_bytes(np.random.default_rng(i).bytes(4000))
                continue
            writer = ShardWriter(out / split / "tmp", 10**6)
            for sample in iter_shard(demo_shards / split / name):
                writer.write({**sample, "txt": b"0 nan nan nan nan nan nan\n"})
            writer.close()
            (out / split / "tmp-000000.tar").rename(out / split / name)
    return out


def test_garbage_shards_stop_the_run_with_one_error(demo_shards, tmp_path):
    shards = bad_dataset(demo_shards, tmp_path / "garbage", "garbage")
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={tmp_path / 'run'}",
         f"data.shards={shards}", "data.make_demo=null", "data.max_consecutive_skips=40",
         "data.imgsz=64", "data.batch_size=2", "~callbacks.progress"],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1
    assert "NoUsableSamples" in done.stderr
    assert "no usable sample in the last 40 tries" in done.stderr
    assert "unreadable_tar" in done.stderr


def test_sigterm_stops_a_run_that_skips_bad_data(demo_shards, tmp_path):
    """All labels NaN and no skip limit in reach: SIGTERM to the trainer still ends the run
    (its loader workers, skipping, stop through the datamodule's stop event)."""
    import psutil

    shards = bad_dataset(demo_shards, tmp_path / "nan", "nan")
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={tmp_path / 'run'}",
             f"data.shards={shards}", "data.make_demo=null",
             "data.max_consecutive_skips=1000000000", "data.imgsz=64", "data.batch_size=2",
             "~callbacks.progress"],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while "label_not_finite" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "no loader workers"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "StopRequested" in log.read_text() and "trainer is stopping" in log.read_text()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
