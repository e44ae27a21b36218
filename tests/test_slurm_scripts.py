"""The sbatch scripts' own logic, run under bash with the variables SLURM sets for an array."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, env: dict[str, str], *overrides: str) -> None:
    subprocess.run(["bash", str(REPO / "slurm" / name), *overrides], check=True,
                   env={**os.environ, **env}, capture_output=True, cwd=REPO)


def test_array_tasks_then_finalize(demo_tars, tmp_path):
    out = tmp_path / "shards"
    base = {"SA1B_INPUT": str(demo_tars[0].parent), "SA1B_OUTPUT": str(out),
            "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2",
            "SLURM_CPUS_PER_TASK": "1"}
    run_script("convert_sa1b.sbatch", {**base, "SLURM_ARRAY_TASK_ID": "3"}, "sample.fraction=1")
    assert [p.name for p in (out / "done").iterdir()] == ["sa_000000.json"]
    run_script("convert_sa1b.sbatch", {**base, "SLURM_ARRAY_TASK_ID": "4"}, "sample.fraction=1")
    run_script("finalize_sa1b.sbatch", base, "sample.fraction=1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(manifest["samples"].values()) == 12


def test_array_tasks_for_a_coco_input(shared_data, tmp_path):
    """The same scripts convert any input: the COCO sample as a 2-task array, then finalize."""
    out = tmp_path / "shards"
    sample = shared_data / "coco_sample"
    coco = ["input=coco", f"input.annotation={sample / 'panoptic_coco_detection_format.json'}",
            f"input.image_root={sample / 'input_images'}", "folder_chunk=1",
            "record.max_side=128"]
    base = {"CONVERT_OUTPUT": str(out), "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_CPUS_PER_TASK": "1"}
    for task in ("0", "1"):
        run_script("convert_sa1b.sbatch", {**base, "SLURM_ARRAY_TASK_ID": task}, *coco)
        assert len(list((out / "done").iterdir())) == int(task) + 1
    run_script("finalize_sa1b.sbatch", base, *coco)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(manifest["samples"].values()) == 2
    assert manifest["config"]["input"]["type"] == "coco"
