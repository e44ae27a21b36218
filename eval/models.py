"""The evaluation models (``conf/model/fastsam.yaml``, ``conf/model/sam.yaml``) as predictors of
the evaluation loop (``eval.core.Predictor``): checked when the run starts, built in one place.

    model = build_model(cfg.model, kind="proposals")         # .predict(images) -> dicts
    edges = build_model(cfg.model, kind="edges")             # .everything(images, probs=True)
    boxes = build_model(cfg.model, kind="instance", detections=dets)
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from fastsam_train.infer.official import check_protocol

MODELS = ("fastsam", "sam")
FASTSAM_LOADING = ("name", "weights", "allow_pickle", "device", "half")  # the rest: PredictOptions


class FastSAMEverything:
    """``fastsam_train.infer.Predictor`` in everything mode as the loop's ``Predictor``
    (``everything`` is the predictor's own, for the edge task)."""

    name = "fastsam"

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def everything(self, images, probs: bool = False, rle: bool = False):
        return self.predictor.everything(images, probs=probs, rle=rle)

    def predict(self, images: list) -> list[dict]:
        segs = self.predictor.everything(images, rle=True)
        return [{"rles": s.rles, "boxes": s.boxes, "scores": s.scores} for s in segs]


def check_model_cfg(model: DictConfig) -> None:
    """Fail before any work on a model config that cannot run: an unknown ``model.name``,
    ``mask_protocol`` or SAM ``type``, naming the allowed values."""
    name = model.get("name")
    if name not in MODELS:
        raise ValueError(f"model.name must be one of {', '.join(MODELS)} (conf/model/<name>.yaml,"
                         f" chosen with model=<name>); got {name!r}")
    if name == "fastsam":
        check_protocol(model.mask_protocol)
    else:
        from eval.sam import check_sam_type

        check_sam_type(model.type)


def describe_model(model: DictConfig) -> dict:
    """What report.md says about the model: its name, weights and mask protocol."""
    if model.name == "sam":
        return {"model": "SAM", "weights": str(OmegaConf.select(model, "checkpoint")),
                "sam_type": model.type, "mask_protocol": "SAM's own (segment-anything 1.0)"}
    return {"model": "FastSAM", "weights": str(OmegaConf.select(model, "weights")),
            "mask_protocol": model.mask_protocol}


def build_model(model_cfg: DictConfig, kind: str = "proposals", detections=None):
    """The predictor of ``model_cfg`` for a task of ``kind`` (proposals / edges / instance;
    ``detections`` by image id, for SAM's box prompts)."""
    check_model_cfg(model_cfg)
    cfg = OmegaConf.to_container(model_cfg, resolve=True)
    if cfg["name"] == "fastsam":
        from fastsam_train.infer import Predictor

        options = {k: v for k, v in cfg.items() if k not in FASTSAM_LOADING}
        return FastSAMEverything(Predictor.from_weights(
            cfg["weights"], allow_pickle=cfg["allow_pickle"], device=cfg["device"],
            half=cfg["half"], **options))
    from eval.sam import SamBoxPrompts, SamEverything, load_sam

    sam = load_sam(cfg["type"], cfg["checkpoint"], cfg["device"])
    if kind == "instance":
        return SamBoxPrompts(sam, detections or {})
    if kind not in cfg["generator"]:
        raise ValueError(f"conf/model/sam.yaml has no generator settings for {kind!r} tasks")
    return SamEverything(sam, cfg["generator"][kind],
                         cfg["max_det"] if kind == "proposals" else None)
