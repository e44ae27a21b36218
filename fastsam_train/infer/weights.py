"""Read model weights from our Lightning checkpoints, our weights-only files and ultralytics'
pickled ``.pt`` (our exports, the official FastSAM-x.pt / FastSAM-s.pt).

Every file is first opened with ``torch.load(weights_only=True)``, which builds nothing but
tensors and plain containers. Lightning checkpoints written by ``FastSAMModule`` pass (their
hyperparameters are stored as plain dicts). An ultralytics ``.pt`` is a pickled full model: opening
it executes code from the file, so it is refused unless the caller passes ``allow_pickle=True``;
``save_weights`` then writes a weights-only copy that never needs that again.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastsam_train import ultra

WEIGHTS_FORMAT = "fastsam-train/weights-v1"


class PickleRequiredError(ValueError):
    """The file can only be read by unpickling arbitrary Python objects."""


@dataclass
class Weights:
    """``config`` = {arch, scale, nc, reg_max} (``ultra.build_model`` arguments), the model's
    ``state_dict`` (keys ``model.<i>...``), and where they came from."""

    config: dict
    state_dict: dict[str, torch.Tensor]
    source: str


def read_weights(path: str | Path, allow_pickle: bool = False) -> Weights:
    """Weights of a ``.ckpt`` (EMA when present), a weights-only file or an ultralytics ``.pt``.

    Raises ``FileNotFoundError``, ``PickleRequiredError`` (a pickled file without
    ``allow_pickle``; the message names the Python objects it would build) or ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    check_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return _read_pickled(path, allow_pickle)
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a PyTorch checkpoint ({e})") from e
    return _from_dict(obj, path, "")


def check_archive(path: Path) -> None:
    """Raise ValueError if a zip checkpoint (every ``torch.save`` since 1.6) fails a CRC-32.

    ``torch.load`` does not check them, so a flipped bit in a tensor would load silently as a
    different weight. One read of the file; a legacy (non-zip) file has nothing to check."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted archive
        raise ValueError(f"{path}: corrupt checkpoint archive ({type(exc).__name__}: "
                         f"{exc})") from exc
    if bad is not None:
        raise ValueError(f"{path}: corrupt checkpoint: {bad} fails its CRC-32 check")


def _read_pickled(path: Path, allow_pickle: bool) -> Weights:
    try:
        needs = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path),
                       key=lambda name: (not name.startswith("ultralytics.nn.tasks"), name))
    except Exception:  # not a zip archive: a legacy torch.save or a bare pickle
        needs = ["(legacy pickle)"]
    if not allow_pickle:
        raise PickleRequiredError(
            f"{path} is not a weights-only checkpoint: loading it would unpickle Python objects "
            f"({', '.join(needs[:4])}{', ...' if len(needs) > 4 else ''}), which runs code from "
            "the file. ultralytics .pt files (our weights/last.pt, the official FastSAM-x.pt and "
            "FastSAM-s.pt) are such pickled full models. If you trust the file, pass "
            "allow_pickle=True (CLI: --allow-pickle), or convert it once with "
            "`fastsam convert-weights SRC DST --allow-pickle` and use DST from then on.")
    if any(name.startswith("ultralytics.") for name in needs):
        state_dict = ultra.read_pickled_checkpoint(path)
        config = ultra.validate_model_config(ultra.model_config_from_state_dict(state_dict))
        return Weights(config, state_dict, "ultralytics-pickle")
    return _from_dict(torch.load(path, map_location="cpu", weights_only=False), path, "pickled ")


def _from_dict(obj: object, path: Path, how: str) -> Weights:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(obj).__name__}")
    if obj.get("format") == WEIGHTS_FORMAT:
        config = ultra.validate_model_config(obj.get("config"), f"{path} config")
        return Weights(config, _state_dict(obj.get("state_dict"), path), how + "weights")
    if "state_dict" in obj and "hyper_parameters" in obj:  # FastSAMModule (Lightning)
        hyper = obj["hyper_parameters"]
        model = hyper.get("model") if isinstance(hyper, dict) else None
        config = ultra.validate_model_config(model, f"{path} hyper_parameters.model")
        ema = obj.get("ema")
        if isinstance(ema, dict) and ema.get("weights"):
            return Weights(config, _state_dict(ema["weights"], path), how + "lightning-ema")
        state = {k.removeprefix("model."): v for k, v in _state_dict(obj["state_dict"], path)
                 .items() if k.startswith("model.")}
        return Weights(config, state, how + "lightning")
    raise ValueError(f"{path}: unknown checkpoint layout (keys {sorted(obj)[:8]}); expected a "
                     "fastsam-train .ckpt, a weights file from `fastsam convert-weights`, or an "
                     "ultralytics .pt")


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """``obj`` if it is a mapping of string keys to tensors, else ValueError naming ``path``."""
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"{path}: the state_dict is not a mapping of names to tensors")
    return obj


def save_weights(weights: Weights, path: str | Path, half: bool = False) -> Path:
    """Write a weights-only file (loads with ``torch.load(weights_only=True)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if half and v.is_floating_point() else v
             for k, v in weights.state_dict.items()}
    torch.save({"format": WEIGHTS_FORMAT, "config": dict(weights.config), "state_dict": state},
               path)
    return path


def build_network(weights: Weights, fuse: bool = True) -> nn.Module:
    """The eval-mode network ``x (B, 3, H, W) in [0, 1] -> (raw, proto)`` for ``weights``.
    Every tensor must match the architecture named by ``weights.config`` (strict load)."""
    cfg = ultra.validate_model_config(weights.config, f"weights ({weights.source})")
    model = ultra.build_model(cfg["scale"], nc=cfg["nc"], reg_max=cfg["reg_max"],
                              arch=cfg["arch"], prototypes=cfg["prototypes"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights.state_dict.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights ({weights.source}) do not fit {cfg}: {str(e)[:500]}") from e
    return ultra.inference_network(model, fuse=fuse)
