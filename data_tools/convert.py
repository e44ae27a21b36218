"""Convert a dataset into class-agnostic YOLO-seg webdataset shards (conf/convert.yaml).

    python data_tools/convert.py input.paths=[/data/sa1b] output=/data/sa1b_2pct workers=32
    python data_tools/convert.py input=coco input.annotation=instances_train2017.json \
        input.image_root=/data/coco/train2017 output=/data/coco_shards
    python data_tools/convert.py input=bsds input.root=/data output=/data/bsds_shards
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fastsam_train.data.convert import convert_from_config
from fastsam_train.entry import one_line_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    with one_line_errors("convert"):
        convert_from_config(cfg)


if __name__ == "__main__":
    main()
