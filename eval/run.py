"""Evaluate FastSAM (or SAM) on COCO / LVIS / BSDS500: ``python eval/run.py task=coco_ar
model.weights=...`` (``model=sam model.checkpoint=... model.type=vit_h`` for SAM).

Tasks (conf/task/): ``coco_ar`` / ``lvis_ar`` / ``bsds_ar`` (class-agnostic proposals),
``coco_instance`` / ``lvis_instance`` (detector boxes as prompts, ``task.detections=<json>``),
``bsds_edges`` (BSDS500 zero-shot edges, with Sobel / Canny rows). Each task names its run path
(``task.pipeline``) and evaluator (``task.evaluator``) with ``_target_``; eval/pipeline.py runs
them. Models: ``conf/model/fastsam.yaml`` (default) and ``conf/model/sam.yaml``, checked before
any work. ``predictions=<run>/predictions.jsonl.gz`` re-evaluates saved predictions without the
model. Writes ``metrics.json``, ``report.md``, a plot and ``predictions.jsonl.gz`` to the Hydra
run directory, and ``per_image.bin``: running again into the same folder
(``hydra.run.dir=<run>``) with the same settings resumes (``resume=false``: no log).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the `eval` package, not its modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from eval.pipeline import run  # noqa: E402
from fastsam_train.entry import one_line_errors  # noqa: E402

__all__ = ["main", "run"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with one_line_errors("eval"):
        return run(cfg).get(cfg.task.headline)


if __name__ == "__main__":
    main()
