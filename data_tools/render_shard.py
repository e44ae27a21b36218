"""Render converted samples (polygons over the image) to PNGs to check conversion by eye.

    python data_tools/render_shard.py shards=demo/shards/train count=4
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fastsam_train.data.shards import iter_shard
from fastsam_train.io import atomic_write_image
from fastsam_train.plots import render_sample

log = logging.getLogger("render_shard")


def render(shards: Path, out: Path, count: int) -> list[Path]:
    """Write ``count`` renders of samples found under ``shards``; returns the PNG paths."""
    paths = [shards] if shards.is_file() else sorted(shards.glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"no .tar shards at {shards}")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for shard in paths:
        for sample in iter_shard(shard):
            if len(written) >= count:
                return written
            target = out / f"{sample['__key__']}.png"
            atomic_write_image(target, render_sample(sample), fsync=False)
            written.append(target)
    return written


@hydra.main(version_base="1.3", config_path="../conf", config_name="render")
def main(cfg: DictConfig) -> None:
    written = render(Path(cfg.shards), Path(cfg.out), cfg.count)
    log.info("wrote %d renders to %s", len(written), cfg.out)


if __name__ == "__main__":
    main()
