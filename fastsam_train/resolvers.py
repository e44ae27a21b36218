"""OmegaConf resolvers the configs use; registered by the entry points before Hydra composes.

``${gpus_per_node:${trainer.accelerator},${trainer.devices}}`` (conf/hydra/launcher/slurm.yaml):
the GPUs a SLURM task array should request per node, so a GPU experiment asks for its devices
and a CPU one for none, without a cluster setting in the experiment files.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def gpus_per_node(accelerator: str, devices) -> int | None:
    """``devices`` when the trainer runs on GPUs (gpu / cuda / auto with an int), else None."""
    if str(accelerator) in ("gpu", "cuda") and str(devices).isdigit():
        return int(devices)
    return None


def register() -> None:
    """Idempotent."""
    if not OmegaConf.has_resolver("gpus_per_node"):
        OmegaConf.register_new_resolver("gpus_per_node", gpus_per_node)
