"""Convert SA-1B (tars or extracted folders) into class-agnostic YOLO-seg webdataset shards.

    python data_tools/convert_sa1b.py input=[/data/sa1b] output=/data/sa1b_2pct workers=32
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fastsam_train.data.convert import ConvertOptions, plan, run_conversion
from fastsam_train.data.manifest import finalize
from fastsam_train.data.records import RecordOptions
from fastsam_train.entry import one_line_errors

log = logging.getLogger("convert_sa1b")
STAGES = ("all", "convert", "finalize")


def options_from_cfg(cfg: DictConfig) -> ConvertOptions:
    return ConvertOptions(fraction=cfg.sample.fraction, seed=cfg.sample.seed,
                          strategy=cfg.sample.strategy, val_fraction=cfg.val_fraction,
                          samples_per_shard=cfg.samples_per_shard, folder_chunk=cfg.folder_chunk,
                          record=RecordOptions(**OmegaConf.to_container(cfg.record)))


def convert(cfg: DictConfig) -> dict:
    """Run the configured stage; returns the manifest (or run counters for stage=convert)."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {cfg.stage!r}")
    inputs = [cfg.input] if isinstance(cfg.input, str) else list(cfg.input)
    opts, out_dir = options_from_cfg(cfg), Path(cfg.output)
    if cfg.stage != "finalize":
        sources = plan(inputs, opts, cfg.task.index, cfg.task.count)
        totals = run_conversion(sources, opts, out_dir, cfg.workers)
        log.info("conversion: %s", totals)
        if cfg.stage == "convert":
            return totals
    manifest = finalize(out_dir, plan(inputs, opts), opts)
    log.info("samples %s in shards %s; %d images skipped %s; complete=%s", manifest["samples"],
             manifest["shards"], len(manifest["skipped"]), manifest["skipped_by_reason"],
             manifest["complete"])
    return manifest


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    with one_line_errors("convert"):
        convert(cfg)


if __name__ == "__main__":
    main()
