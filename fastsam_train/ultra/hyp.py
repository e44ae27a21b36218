"""ultralytics' hyperparameter namespace (default.yaml + overrides) and the 8.0.120 / 8.4
rule keys."""

from __future__ import annotations

from typing import Any

from ultralytics.cfg import get_cfg
from ultralytics.utils import (
    DEFAULT_CFG_DICT,
    IterableSimpleNamespace,
)

RULES = ("v8_0_120", "v8_4")  # whose semantics: 8.0.120 (FastSAM's trainer) or the installed 8.4


RULE_KEYS = ("loss_rule", "optimizer_rule", "schedule_rule", "augment_rule")  # all default "v8_4"


def hyperparameters(**overrides: Any) -> IterableSimpleNamespace:
    """ultralytics' default.yaml merged with ``overrides`` (unknown keys raise SyntaxError).

    Holds what the loss (``box`` 7.5, ``cls`` 0.5, ``dfl`` 1.5, ``overlap_mask``, ``mask_ratio``)
    and the augmentations (``mosaic``, ``degrees``, ``hsv_h`` ...) read as attributes, plus the
    ``RULE_KEYS`` (each one of ``RULES``; default "v8_4"; anything else raises ValueError).
    """
    rules = {k: overrides.pop(k, "v8_4") for k in RULE_KEYS} if overrides else \
        dict.fromkeys(RULE_KEYS, "v8_4")
    bad = {k: v for k, v in rules.items() if v not in RULES}
    if bad:
        raise ValueError(f"{bad}: rules must be one of {RULES}")
    hyp = get_cfg(DEFAULT_CFG_DICT, overrides or None)
    for key, value in rules.items():
        setattr(hyp, key, value)
    return hyp


def without_mix(hyp: IterableSimpleNamespace) -> IterableSimpleNamespace:
    """``hyp`` with mosaic, mixup, cutmix and copy-paste off: ultralytics' ``close_mosaic``."""
    return hyperparameters(**{**vars(hyp), "mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0,
                              "copy_paste": 0.0})
