"""Alias of ``data_tools/convert.py`` (same config, ``conf/convert.yaml``) kept for older commands.

    python data_tools/convert_sa1b.py input.paths=[/data/sa1b] output=/data/sa1b_2pct
    python data_tools/convert_sa1b.py input=[/data/sa1b] output=...   # older spelling, accepted
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fastsam_train.data.convert import convert_from_config
from fastsam_train.entry import one_line_errors

INPUT_TYPES = ("sa1b", "coco", "bsds")


def legacy_overrides(argv: list[str]) -> list[str]:
    """``input=<paths>`` (from before inputs were a config group) -> ``input.paths=<paths>``."""
    return [f"input.paths={a.split('=', 1)[1]}" if a.startswith("input=")
            and a.split("=", 1)[1] not in INPUT_TYPES else a for a in argv]


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    with one_line_errors("convert"):
        convert_from_config(cfg)


if __name__ == "__main__":
    sys.argv[1:] = legacy_overrides(sys.argv[1:])
    main()
