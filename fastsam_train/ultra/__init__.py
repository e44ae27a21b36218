"""The one adapter around ultralytics (8.4.x): model, hyperparameters, loss, augmentations,
optimizer, schedule, EMA and checkpoints. Nothing else in the project imports ultralytics
(``tests/test_layout.py`` checks). One module per concern, all re-exported here, so callers write
``from fastsam_train import ultra; ultra.build_model(...)``: ``hyp`` (hyperparameters, rules),
``model`` (network, arch checks, state dicts, checkpoints), ``loss``, ``augment`` (labels,
transforms, ``Format``, collate), ``ops`` (NMS + masks), ``optim`` (optimizer, schedule, warmup),
``v8_0`` (8.0.120's semantics).

Facts about ultralytics 8.4 that the callers rely on (checked against 8.4.190):

* Batch format (``collate``): ``img`` uint8 (B, 3, H, W) **RGB** (``Format`` flips the BGR input),
  ``batch_idx`` float (N,), ``cls`` float (N, 1), ``bboxes`` float (N, 4) normalised xywh,
  ``masks`` uint8/int32 (B, H/r, W/r) instance indices 1..n per image when ``overlap_mask`` (the
  default; a pixel keeps only the smallest covering instance) else (N, H/r, W/r) binary, with
  r = ``mask_ratio`` (4); plus ``sem_masks``, ``im_file``, ``ori_shape``, ``resized_shape``,
  ``ratio_pad`` lists. The model wants ``img.float() / 255``.
* Each loss component is a mean over the whole batch's targets times its gain (box, cls, dfl are
  divided by the summed target scores, clamped to >= 1, so they scale with B while that sum is
  < 1, early on; seg by the number of foreground anchors), and the total is then multiplied by
  the batch size B, so the gradient grows with the batch. ultralytics compensates by stepping every
  ``accumulate = max(round(nbs / batch), 1)`` batches (nbs = 64), scales weight decay by
  ``batch * accumulate / nbs``, clips the gradient norm at 10, and multiplies the loss by the world
  size under DDP (which averages gradients). Lightning divides the loss by
  ``accumulate_grad_batches``: multiply it back to match.
* ``RULES``: where 8.0.120 (the FastSAM authors' trainer) and 8.4 differ, the loss, the "auto"
  optimizer, the warmup and the augmentations take a rule, "v8_0_120" or "v8_4" (the
  differences are listed in ``v8_0.py``; ``data_tools/parity/parity_8_0.py`` checks them).
* ``v8SegmentationLoss`` and ``ModelEMA`` capture tensors/devices when built (EMA on its first
  ``update``): build them after the model is on its final device. The EMA copy is no submodule.
"""

from __future__ import annotations

from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.utils import ROOT, IterableSimpleNamespace
from ultralytics.utils.torch_utils import ModelEMA

from fastsam_train.ultra import v8_0
from fastsam_train.ultra.augment import (
    SampleBuffer,
    TrainFormat,
    build_train_transforms,
    build_val_transforms,
    collate,
    label_dict,
    polygon_masks,
)
from fastsam_train.ultra.hyp import RULE_KEYS, RULES, hyperparameters, without_mix
from fastsam_train.ultra.loss import LOSS_NAMES, build_loss
from fastsam_train.ultra.model import (
    ARCHITECTURES,
    EMA_ATTRS,
    MODEL_LIMITS,
    ImportReport,
    build_model,
    export_ultralytics_checkpoint,
    import_ultralytics_checkpoint,
    inference_network,
    model_config_from_state_dict,
    read_pickled_checkpoint,
    validate_model_config,
)
from fastsam_train.ultra.ops import segment_predictions
from fastsam_train.ultra.optim import (
    OptimizerChoice,
    accumulate_steps,
    apply_warmup,
    build_optimizer,
    lr_factor,
    optimizer_iterations,
    optimizer_param_groups,
    resolve_optimizer,
    warmup_iterations,
    warmup_lr,
    warmup_momentum,
)

__all__ = [
    "ARCHITECTURES", "EMA_ATTRS", "LOSS_NAMES", "MODEL_LIMITS", "ROOT", "RULES", "RULE_KEYS",
    "ULTRALYTICS_VERSION", "ImportReport", "IterableSimpleNamespace", "ModelEMA",
    "OptimizerChoice", "SampleBuffer", "TrainFormat", "accumulate_steps", "apply_warmup",
    "build_loss", "build_model", "build_optimizer", "build_train_transforms",
    "build_val_transforms", "collate", "export_ultralytics_checkpoint", "hyperparameters",
    "import_ultralytics_checkpoint", "inference_network", "label_dict", "lr_factor",
    "model_config_from_state_dict", "optimizer_iterations", "optimizer_param_groups",
    "polygon_masks", "read_pickled_checkpoint", "resolve_optimizer", "segment_predictions",
    "v8_0", "validate_model_config", "warmup_iterations", "warmup_lr", "warmup_momentum",
    "without_mix",
]  # fmt: skip
