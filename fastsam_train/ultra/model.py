"""The YOLOv8-seg network: architecture checks, building, state dicts, ultralytics checkpoints
(import / export), the inference wrapper."""

from __future__ import annotations

import copy
import math
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.tasks import SegmentationModel, torch_safe_load
from ultralytics.utils import (
    DEFAULT_CFG_DICT,
    DEFAULT_CFG_KEYS,
    ROOT,
    YAML,
    IterableSimpleNamespace,
)

from fastsam_train.ultra.hyp import hyperparameters

EMA_ATTRS = ("yaml", "nc", "args", "names", "stride")  # copied by ema.update_attr before saving


ARCHITECTURES = ("yolov8-seg",)  # packaged model YAMLs a config or a file may name


MODEL_LIMITS = {"nc": (1, 1000), "reg_max": (1, 64), "prototypes": (1, 256)}  # inclusive


def validate_model_config(config: Any, source: str = "model config") -> dict[str, Any]:
    """``{arch, scale, nc, reg_max[, prototypes]}`` checked for ``build_model``; raises ValueError.

    Values read from a file (weights, checkpoints, configs) must never choose code: ``arch`` must
    be one of ``ARCHITECTURES`` (a name, never a path: ultralytics ``eval``s strings of a model
    YAML), ``scale`` one of that YAML's scales, and ``nc`` / ``reg_max`` / ``prototypes`` plain
    integers within ``MODEL_LIMITS``. Unknown keys are refused. ``source`` names the origin in
    the message."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: model config must be a mapping, got {type(config).__name__}")
    unknown = sorted(map(str, set(config) - {"arch", "scale", *MODEL_LIMITS}))
    if unknown:
        raise ValueError(f"{source}: unknown model config keys {unknown}")
    arch = config.get("arch", "yolov8-seg")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"{source}: arch {arch!r} is not a packaged architecture "
                         f"{list(ARCHITECTURES)}")
    scales = sorted(YAML.load(ROOT / "cfg" / "models" / "v8" / f"{arch}.yaml")["scales"])
    scale = config.get("scale")
    if not isinstance(scale, str) or scale not in scales:
        raise ValueError(f"{source}: scale {scale!r} not in {arch} scales {scales}")
    out = {"arch": arch, "scale": scale}
    for key, (low, high) in MODEL_LIMITS.items():
        value = config.get(key, {"nc": 1, "reg_max": 26, "prototypes": 32}[key])
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{source}: {key} must be an integer in [{low}, {high}], "
                             f"got {value!r}")
        out[key] = value
    return out


def build_model(
    scale: str,
    nc: int = 1,
    reg_max: int = 26,
    arch: str = "yolov8-seg",
    hyp: IterableSimpleNamespace | None = None,
    prototypes: int = 32,
) -> SegmentationModel:
    """Randomly initialised ultralytics ``SegmentationModel`` from the packaged ``{arch}.yaml``.

    The YAML is passed as a dict: from a file path ultralytics would take the scale from the file
    name and ignore ours. ``model.args`` gets ``hyp`` (default ``hyperparameters()``), as the loss
    reads its gains there. Params for nc=1, reg_max=26: n 3.63M, s 12.32M, x 72.23M.
    ``prototypes``: number of mask prototypes (YOLACT's k; 32 in YOLOv8-seg and FastSAM).
    Forward in train mode: (B, 3, H, W) float in [0, 1] -> dict of ``boxes`` (B, 4*reg_max, A),
    ``scores`` (B, nc, A), ``mask_coefficient`` (B, 32, A), ``proto`` (B, 32, H/4, W/4), ``feats``.
    """
    checked = validate_model_config({"arch": arch, "scale": scale, "nc": nc,
                                     "reg_max": reg_max, "prototypes": prototypes})
    cfg = YAML.load(ROOT / "cfg" / "models" / "v8" / f"{checked['arch']}.yaml")
    cfg.update(scale=scale, nc=nc, reg_max=reg_max)
    head = cfg["head"][-1]  # [[from], 1, "Segment", [nc, nm, npr]]: nm = mask prototypes
    if head[2] != "Segment":
        raise ValueError(f"{arch}: the last head layer is {head[2]}, not Segment")
    head[3] = [head[3][0], int(prototypes), *head[3][2:]]
    model = SegmentationModel(cfg, ch=3, nc=nc, verbose=False)
    model.args = hyp if hyp is not None else hyperparameters()
    return model


def export_ultralytics_checkpoint(
    model: SegmentationModel,
    path: str | Path,
    names: dict[int, str] | None = None,
    half: bool = True,
    **meta: Any,
) -> Path:
    """Write ``model`` as a final ultralytics checkpoint (``strip_optimizer`` layout) that
    ``ultralytics.YOLO(path)`` loads and predicts with. The pickled full model is a copy (FP16 if
    ``half``) with ``args`` as a dict and no criterion; ``meta`` is stored under "fastsam_meta".
    Pass the EMA copy (``ema.ema``) for release weights, as ultralytics does."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"ultralytics only loads '.pt' checkpoints, got {path.name}")
    m = copy.deepcopy(model).cpu().float()
    m.criterion = None
    m.names = names or m.names
    args = getattr(model, "args", None) or {}
    args = {**DEFAULT_CFG_DICT, **(args if isinstance(args, dict) else vars(args))}
    args["task"] = "segment"
    m.args = {k: v for k, v in args.items() if k in DEFAULT_CFG_KEYS}  # as strip_optimizer keeps
    if half:
        m.half()
    for p in m.parameters():
        p.requires_grad = False
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "epoch": -1,
        "best_fitness": None,
        "model": m,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": m.args,
        "fastsam_meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


class ImportReport(NamedTuple):
    loaded: list[str]
    missing: list[str]  # in our model, absent from the checkpoint
    unexpected: list[str]  # in the checkpoint, absent from our model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, checkpoint, model shape


def import_ultralytics_checkpoint(
    path: str | Path, model: nn.Module, allow_pickle: bool = False, strict: bool = False
) -> ImportReport:
    """Copy weights from an ultralytics ``.pt`` (its "ema", else "model") into ``model`` by
    state_dict key, skipping shape mismatches. Such files are pickled full models: unpickling runs
    code from the file, so it needs ``allow_pickle=True`` (trusted files only). Old module paths
    (``ultralytics.yolo.*``, e.g. the original FastSAM weights) are remapped by ultralytics'
    loader. ``strict`` raises if anything was missing or mismatched."""
    if not allow_pickle:
        raise ValueError(
            f"{path}: ultralytics checkpoints are pickled Python objects and loading one can run "
            "arbitrary code. Pass allow_pickle=True only for files you trust."
        )
    if not Path(path).is_file():
        raise FileNotFoundError(path)  # else ultralytics would try to download a same-named asset
    ckpt, _ = torch_safe_load(str(path), safe_only=False)
    source = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(source, nn.Module):
        raise TypeError(f"{path} holds no ultralytics model under 'ema' or 'model'")
    theirs, ours = source.float().state_dict(), model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(ours[k].shape))
        for k, v in theirs.items()
        if k in ours and v.shape != ours[k].shape
    ]
    bad = {k for k, _, _ in mismatched}
    matched = {k: v for k, v in theirs.items() if k in ours and k not in bad}
    report = ImportReport(
        loaded=sorted(matched),
        missing=sorted(set(ours) - set(theirs)),
        unexpected=sorted(set(theirs) - set(ours)),
        mismatched=mismatched,
    )
    if strict and (report.missing or report.mismatched):
        raise RuntimeError(f"{path}: missing {report.missing}, mismatched {report.mismatched}")
    model.load_state_dict(matched, strict=False)
    return report


class _InferenceNetwork(nn.Module):
    """(B, 3, H, W) float RGB in [0, 1] -> ``raw`` (B, 4 + nc + 32, A): xywh boxes in input pixels,
    sigmoid class scores, mask coefficients; and ``proto`` (B, 32, H/4, W/4)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (raw, proto), _ = self.model(x)  # eval mode: ((predictions, prototypes), raw head dict)
        return raw, proto


def inference_network(model: SegmentationModel, fuse: bool = True) -> nn.Module:
    """``model`` in eval mode (Conv+BN folded when ``fuse``, about 10-20 % faster) wrapped to return
    only ``(raw, proto)``: the two tensors post-processing needs and ONNX exports. Weights are
    channels-last, the layout oneDNN's CPU convolutions and GPU tensor cores run fastest on
    (measured here at 1024: FastSAM-s 16 %, FastSAM-x 8 % less forward time; outputs equal to
    1e-4). Modifies ``model`` in place."""
    model = model.float().eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    if fuse:
        model = model.fuse(verbose=False)
    return _InferenceNetwork(model).eval()


def read_pickled_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """float32 state_dict of the model in an ultralytics ``.pt`` (its "ema", else "model").

    **Unpickles the file: it runs code from it.** Callers must have the user's explicit consent.
    ultralytics' loader remaps the module paths of 8.0.x pickles (``ultralytics.yolo.utils`` ->
    ``ultralytics.utils``, ``ultralytics.yolo.v8`` -> ``ultralytics.models.yolo``, ...), which
    is what lets the official FastSAM-x.pt / FastSAM-s.pt (trained with 8.0.x) load here."""
    if not Path(path).is_file():
        raise FileNotFoundError(path)  # else ultralytics would try to download a same-named asset
    ckpt, _ = torch_safe_load(str(path), safe_only=False)
    source = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(source, nn.Module):
        raise TypeError(f"{path} holds no ultralytics model under 'ema' or 'model'")
    return {k: v.float() if v.is_floating_point() else v for k, v in source.state_dict().items()}


def model_config_from_state_dict(
    state_dict: dict[str, torch.Tensor], arch: str = "yolov8-seg"
) -> dict[str, Any]:
    """``{arch, scale, nc, reg_max[, prototypes]}`` of a YOLOv8-seg state_dict, from tensor
    shapes: the scale from the stem width (``model.0.conv.weight``: n 16, s 32, m 48, l 64, x 80
    channels), reg_max from the DFL conv, nc from the last class conv, prototypes from the proto
    module (only when not 32). ``build_model(**config)`` rebuilds it."""
    validate_model_config({"arch": arch, "scale": "n"}, "state_dict reader")
    widths = {math.ceil(min(64, mc) * w / 8) * 8: s
              for s, (_, w, mc) in YAML.load(ROOT / "cfg" / "models" / "v8" / f"{arch}.yaml")
              ["scales"].items()}
    stem = state_dict.get("model.0.conv.weight")
    dfl = [v for k, v in state_dict.items() if k.endswith(".dfl.conv.weight")]
    cls = sorted((k for k in state_dict if ".cv3.0." in k and k.endswith(".weight")),
                 key=lambda k: k.split(".cv3.0.")[1])
    if stem is None or len(dfl) != 1 or not cls or stem.shape[0] not in widths:
        raise ValueError(f"not a {arch} state_dict (stem {None if stem is None else stem.shape}, "
                         f"{len(dfl)} DFL layers)")
    proto = [v for k, v in state_dict.items() if k.endswith(".proto.cv3.conv.weight")]
    config = {"arch": arch, "scale": widths[stem.shape[0]],
              "nc": int(state_dict[cls[-1]].shape[0]), "reg_max": int(dfl[0].shape[1])}
    if proto and proto[0].shape[0] != 32:  # the default is left out (older files lack it)
        config["prototypes"] = int(proto[0].shape[0])
    validate_model_config(config, "state_dict shapes")
    return config
