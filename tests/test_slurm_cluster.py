"""Against a real SLURM scheduler (``slurm/local_cluster.sh`` starts a one-node cluster; CI runs
it): the conversion job array, a two-point Hydra/submitit sweep as one job array plus the
collect table, 2-task DDP taking its ranks from SLURM, and preemption -> requeue -> resume.

Skipped when no scheduler answers, unless ``FASTSAM_REQUIRE_SLURM=1`` (CI sets it), which turns
a missing scheduler into a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.imgsz=128", "data.batch_size=4", "data.num_workers=1", "~callbacks.progress"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def scheduler_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states)


@pytest.fixture(scope="module")
def slurm():
    if not scheduler_up():
        if os.environ.get("FASTSAM_REQUIRE_SLURM") == "1":
            pytest.fail("FASTSAM_REQUIRE_SLURM=1 but no SLURM node is up "
                        "(run slurm/local_cluster.sh as root)")
        pytest.skip("no SLURM scheduler (slurm/local_cluster.sh starts one)")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Demo training shards built once (jobs running at the same time must not race on it)."""
    from fastsam_train.train.datamodule import build_demo_shards

    root = tmp_path_factory.mktemp("slurm_demo") / "shards"
    build_demo_shards(root, num_tars=2, images_per_tar=24, height=384, width=512, max_side=512,
                      val_fraction=0.15)
    return root


def job_env(**extra: str) -> dict[str, str]:
    """The submitting shell: this interpreter as the jobs' Python, this checkout as the repo."""
    return {**os.environ, "FASTSAM_REPO": str(REPO), "FASTSAM_PYTHON": sys.executable,
            "WANDB_MODE": "offline", **extra}


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job: str, timeout: float = 420, states: set[str] = FINISHED) -> dict[str, str]:
    """Poll until every task of ``job`` (an array too) is in ``states``; their info."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                             text=True).stdout.strip().splitlines()
        infos = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out]
        if infos and all(i.get("JobState") in states for i in infos):
            return infos[0]
        time.sleep(2)
    subprocess.run(["scancel", job])
    raise TimeoutError(f"SLURM job {job} not in {sorted(states)} after {timeout} s: "
                       f"{[i.get('JobState') for i in infos]}")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".tar", ".json")
            and p.name not in ("manifest.json", "convert_config.json") and "done" not in p.parts}


def test_conversion_array_equals_a_local_run(slurm, demo_tars, tmp_path):
    out = tmp_path / "slurm_shards"
    ids = subprocess.run(
        [str(REPO / "slurm" / "submit_convert.sh"), str(demo_tars[0].parent), str(out), "2",
         "sample.fraction=1"], cwd=tmp_path, check=True, capture_output=True, text=True,
        env=job_env(SBATCH_ARGS="--cpus-per-task=1 --mem=500M")).stdout.split()
    array, final = ids
    for job in (array, final):
        assert wait_for(job)["JobState"] == "COMPLETED", job_info(job)
    logs = sorted(p.name for p in tmp_path.glob(f"slurm-sa1b-convert-{array}_*.out"))
    assert logs == [f"slurm-sa1b-convert-{array}_0.out", f"slurm-sa1b-convert-{array}_1.out"]
    local = tmp_path / "local_shards"
    subprocess.run([sys.executable, str(REPO / "data_tools" / "convert_sa1b.py"),
                    f"input=[{demo_tars[0].parent}]", f"output={local}", "sample.fraction=1",
                    "workers=1"], cwd=REPO, check=True, capture_output=True)
    ours, theirs = tree_digest(out), tree_digest(local)
    assert any(k.endswith(".tar") for k in ours) and ours == theirs
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_ddp_job_takes_its_ranks_from_slurm(slurm, shards, tmp_path):
    run = tmp_path / "ddp"
    job = subprocess.run(
        [str(REPO / "slurm" / "submit_train.sh"), "trainer=ddp_sim", "trainer.max_epochs=1",
         f"data.shards={shards}", *SMALL], cwd=tmp_path, check=True, capture_output=True,
        text=True, env=job_env(GPUS_PER_NODE="0", TASKS_PER_NODE="2", CPUS_PER_TASK="1",
                               RUN_DIR=str(run))).stdout.strip()
    assert wait_for(job)["JobState"] == "COMPLETED", job_info(job)
    log = (tmp_path / f"slurm-fastsam-train-{job}.out").read_text()
    for rank in (0, 1):
        assert f"SLURMEnvironment (SLURM job {job}, restart 0): global rank {rank} of 2" in log
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    total = sum(json.loads((shards / "train" / "sizes.json").read_text()).values())
    done = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert done == total // (2 * 4)  # each rank ran its half of the epoch
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["slurm_job_id"] == job and "val/ar_100" in summary["metrics"]


def test_sweep_runs_as_one_job_array_and_collects(slurm, shards, tmp_path):
    sweep = tmp_path / "sweep"
    subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=slurm",
         "model.reg_max=16,26", "trainer.max_epochs=1", f"data.shards={shards}", *SMALL,
         f"hydra.sweep.dir={sweep}", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.timeout_min=20"],
        cwd=tmp_path, check=True, capture_output=True, text=True, env=job_env(), timeout=600)
    scripts = list(sweep.glob(".submitit/*/*_submission.sh"))
    assert len(scripts) == 1 and "#SBATCH --array=0-1" in scripts[0].read_text()
    array = scripts[0].parent.name
    jobs = {json.loads((sweep / str(i) / "metrics.json").read_text())["slurm_job_id"]
            for i in (0, 1)}
    assert len(jobs) == 2  # two tasks of that one array, each with its own job id
    assert {p.name for p in sweep.glob(f".submitit/{array}_*")} == {f"{array}_0", f"{array}_1"}
    table = subprocess.run([sys.executable, str(REPO / "data_tools" / "collect_sweep.py"),
                            str(sweep)], check=True, capture_output=True, text=True).stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "done" in line]
    assert "| run | model.reg_max | val/ar_100 |" in table
    assert [r.split("|")[2].strip() for r in rows] == ["16", "26"]
    assert (sweep / "summary.csv").read_text().splitlines()[0].startswith("run,model.reg_max,")


def test_preempted_job_requeues_and_resumes_its_step_count(slurm, shards, tmp_path):
    run, args = tmp_path / "pre", ["trainer.max_epochs=3", f"data.shards={shards}", *SMALL,
                                   "callbacks.last.every_n_train_steps=2"]
    job = subprocess.run([str(REPO / "slurm" / "submit_train.sh"), *args], cwd=tmp_path,
                         check=True, capture_output=True, text=True,
                         env=job_env(GPUS_PER_NODE="0", CPUS_PER_TASK="1",
                                     RUN_DIR=str(run))).stdout.strip()
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").exists():  # training is under way
        assert time.time() < deadline and job_info(job).get("JobState") in ("PENDING",
                                                                             "RUNNING")
        time.sleep(0.5)
    # what SLURM does at --signal=USR1@90: USR1 to every process of the job's steps
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    info = wait_for(job, 120, {"PENDING", *FINISHED})
    assert info["JobState"] == "PENDING" and info["Restarts"] == "1", info
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    assert wait_for(job)["JobState"] == "COMPLETED", job_info(job)

    saved = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    summary = json.loads((run / "metrics.json").read_text())
    log = (tmp_path / f"slurm-fastsam-train-{job}.out").read_text()
    assert f"Restoring states from the checkpoint path at {run / 'hpc_ckpt_1.ckpt'}" in log
    assert summary["slurm_restart_count"] == 1
    assert "preempted at step" in log and "Traceback" not in log  # a clean stop, then resume
    plain = tmp_path / "plain"  # the same run without interruption, outside SLURM
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    subprocess.run([sys.executable, str(REPO / "train.py"), f"hydra.run.dir={plain}", *args],
                   cwd=REPO, check=True, capture_output=True, env=env)
    expected = json.loads((plain / "metrics.json").read_text())["global_step"]
    assert 0 < saved["global_step"] < expected == summary["global_step"]


def test_evaluation_array_runs_one_task_per_array_index(slurm, tmp_path):
    """slurm/eval.sbatch: array task i runs EVAL_TASKS[i] into its own folder (here the BSDS
    baselines twice, on a generated dataset in the BSR layout)."""
    from test_eval_edges import make_bsds

    images, gts = make_bsds(tmp_path / "bsds", n=2)
    common = [f"task.image_dir={images}", f"task.gt_dir={gts}", "task.methods=[sobel]",
              "task.workers=1", "progress=false"]
    out = tmp_path / "outputs"
    job = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--export=ALL",
         str(REPO / "slurm" / "eval.sbatch"), *common], cwd=tmp_path, check=True,
        capture_output=True, text=True,
        env=job_env(EVAL_TASKS="bsds_edges bsds_edges", FASTSAM_EVAL_OUT=str(out))
    ).stdout.strip().split(";")[0]
    assert wait_for(job)["JobState"] == "COMPLETED", job_info(job)
    reports = sorted(out.glob(f"eval-{job}/*/metrics.json"))
    assert [p.parent.name for p in reports] == ["0_bsds_edges", "1_bsds_edges"]
    for report in reports:
        assert json.loads(report.read_text())["metrics"]["sobel"]["sobel/ods"] > 0.8
    logs = sorted(tmp_path.glob(f"slurm-fastsam-eval-{job}_*.out"))
    assert len(logs) == 2 and all("[eval.sbatch] task bsds_edges on cpu" in p.read_text()
                                  for p in logs)
