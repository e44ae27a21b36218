"""Write synthetic SA-1B-format tars (exact schema, COCO RLE) for the demo and tests.

    python data_tools/make_demo_sa1b.py output=demo/sa1b
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fastsam_train.data.demo import make_demo_sa1b

log = logging.getLogger("make_demo_sa1b")


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_demo")
def main(cfg: DictConfig) -> None:
    paths = make_demo_sa1b(Path(cfg.output), cfg.num_tars, cfg.images_per_tar, cfg.height,
                           cfg.width, tuple(cfg.objects), cfg.seed)
    log.info("wrote %d tars to %s", len(paths), cfg.output)


if __name__ == "__main__":
    main()
