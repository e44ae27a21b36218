"""Helpers shared by the test modules: the project's Hydra configs composed as the entry points
compose them, and values read from conf/ (never restated in a test)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose_config(name: str, *overrides: str, hydra_config: bool = False) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` (outside any Hydra app);
    ``hydra_config``: with the ``hydra`` node (launcher, sweeper)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_config)


def compose_eval(*overrides: str) -> DictConfig:
    """``conf/eval.yaml`` with ``overrides`` (what ``python eval/run.py ...`` runs)."""
    return compose_config("eval", *overrides)


def val_nms() -> dict:
    """The validation NMS of conf/train.yaml (``FastSAMModule(val_nms=...)``)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").val_nms)


def bsr_benchmark() -> dict:
    """BSR's benchmark settings as conf/task/bsds_edges.yaml holds them: ``{nthresh, max_dist}``
    (99 thresholds, 0.0075 of the diagonal: what BSR's reference outputs were made with)."""
    task = OmegaConf.load(CONF / "task" / "bsds_edges.yaml").task
    return {"nthresh": int(task.nthresh), "max_dist": float(task.max_dist)}


BSR = bsr_benchmark()
MAX_DIST = BSR["max_dist"]


def bsds_subset(shared: Path, root: Path, counts: dict[str, int]) -> Path:
    """A flat-layout BSDS root (``images/<split>``, ``groundTruth/<split>``) with the first
    ``counts[split]`` images of each split of the shared BSDS500 copy."""
    for split, count in counts.items():
        for kind in ("images", "groundTruth"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for mat in sorted((shared / "bsds500" / "groundTruth" / split).glob("*.mat"))[:count]:
            shutil.copy(mat, root / "groundTruth" / split / mat.name)
            shutil.copy(shared / "bsds500" / "images" / split / f"{mat.stem}.jpg",
                        root / "images" / split / f"{mat.stem}.jpg")
    return root


def kill_when_done(proc, done: Path, count: int = 2, timeout: float = 120) -> int:
    """SIGKILL the conversion ``proc`` once ``done`` holds ``count`` ``*.json`` markers (or
    after ``timeout`` seconds); returns how many it had finished."""
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(done.glob("*.json"))) < count:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(done.glob("*.json")))
