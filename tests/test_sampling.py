"""The 2% sampler and the val split are deterministic, order-free and of the right size."""

from __future__ import annotations

import random

import pytest

from fastsam_train.data.sampling import is_val, keep_image, select_sources, unit_hash

TARS = [f"sa_{i:06d}" for i in range(1000)]


def test_tar_strategy_picks_one_in_fifty_reproducibly():
    chosen = select_sources(TARS, 0.02, seed=0, strategy="tars")
    assert len(chosen) == 20
    shuffled = TARS[:]
    random.Random(5).shuffle(shuffled)
    assert select_sources(shuffled, 0.02, seed=0, strategy="tars") == chosen
    assert select_sources(TARS, 0.02, seed=1, strategy="tars") != chosen
    assert all(keep_image(f"sa_{i}", 0.02, 0, "tars") for i in range(100))


def test_id_strategy_keeps_about_two_percent():
    ids = [f"sa_{i}" for i in range(20000)]
    kept = [i for i in ids if keep_image(i, 0.02, seed=0, strategy="ids")]
    assert 400 - 3 * 20 < len(kept) < 400 + 3 * 20  # binomial sd ~ 19.8
    assert kept == [i for i in ids if keep_image(i, 0.02, seed=0, strategy="ids")]
    assert select_sources(TARS, 0.02, seed=0, strategy="ids") == TARS


def test_val_split_is_independent_of_the_sample_hash():
    ids = [f"sa_{i}" for i in range(20000)]
    val = {i for i in ids if is_val(i, 0.1, seed=0)}
    kept = {i for i in ids if keep_image(i, 0.5, seed=0, strategy="ids")}
    assert 1800 < len(val) < 2200
    assert 0.4 < len(val & kept) / len(val) < 0.6
    assert unit_hash("val", 0, "sa_1") == unit_hash("val", 0, "sa_1")


@pytest.mark.parametrize("fraction,strategy", [(0.0, "tars"), (1.5, "ids"), (0.02, "random")])
def test_bad_sampling_config_raises(fraction, strategy):
    with pytest.raises(ValueError, match="sample"):
        select_sources(TARS, fraction, seed=0, strategy=strategy)
