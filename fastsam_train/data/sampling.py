"""Deterministic subset selection and train/val split, reproducible from (seed, names) alone.

Both decisions hash a string with BLAKE2b, so they do not depend on file order, the number of
workers, which SLURM task saw the item, or the Python hash seed.
"""

from __future__ import annotations

import hashlib

STRATEGIES = ("tars", "ids")


def unit_hash(*parts: object) -> float:
    """Map the parts to a uniform float in [0, 1), stable across machines and runs."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def select_sources(names: list[str], fraction: float, seed: int, strategy: str) -> list[str]:
    """Sources to read. ``tars``: the ``round(fraction * n)`` (at least 1) names with the
    smallest hash; ``ids``: every source (images are then sampled one by one).

    SA-1B's 1000 tars with fraction 0.02 give 20 whole tars (~220k images).
    """
    _check(fraction, strategy)
    if strategy == "ids" or fraction >= 1.0:
        return sorted(names)
    count = max(1, round(fraction * len(names)))
    return sorted(sorted(names, key=lambda n: unit_hash("tar", seed, n))[:count])


def keep_image(image_id: object, fraction: float, seed: int, strategy: str) -> bool:
    """Whether an image of a selected source is in the sample (always, for ``tars``)."""
    _check(fraction, strategy)
    return strategy == "tars" or unit_hash("id", seed, image_id) < fraction


def is_val(image_id: object, val_fraction: float, seed: int) -> bool:
    """Held-out validation membership by image id (independent of the sampling hash)."""
    return unit_hash("val", seed, image_id) < val_fraction


def _check(fraction: float, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"sample.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sample.fraction must be in (0, 1], got {fraction}")
