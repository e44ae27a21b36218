"""Train FastSAM: ``python train.py +experiment=fastsam_x`` (CPU demo without an experiment).

An experiment with ``final_eval`` (``bsds_mini``) is evaluated when training ends
(``eval/after_training.py``)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from fastsam_train import resolvers

resolvers.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from fastsam_train.train.run import train  # after Hydra parsed the CLI (fast --help)

    metrics = train(cfg)
    final = cfg.get("final_eval")
    if final and finished_on_rank_zero(cfg):
        from eval.after_training import evaluate_run

        evaluate_run(cfg.paths.output_dir, {t: list(o) for t, o in final.tasks.items()},
                     list(final.baselines), final.untrained, list(final.overrides),
                     final.get("edge_conf"))
    return metrics.get("val/ar_100")


def finished_on_rank_zero(cfg: DictConfig) -> bool:
    """The run ended normally (``metrics.json`` written: not preempted) and this is rank 0."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run") and \
        (Path(cfg.paths.output_dir) / "metrics.json").is_file()


if __name__ == "__main__":
    main()
