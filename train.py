"""Train FastSAM: ``python train.py +experiment=fastsam_x`` (CPU demo without an experiment)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fastsam_train import resolvers

resolvers.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from fastsam_train.train.run import train  # after Hydra parsed the CLI (fast --help)

    metrics = train(cfg)
    return metrics.get("val/ar_100")


if __name__ == "__main__":
    main()
