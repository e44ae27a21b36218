"""Fine-tuning (``+experiment=finetune``) from a FastSAM-layout checkpoint: an ultralytics-format
pickle of a 1-class, reg_max-26 YOLOv8-seg as our export writes it (the layout of the official
FastSAM-x.pt / FastSAM-s.pt), or a weights-only copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_config

from fastsam_train import ultra
from fastsam_train.infer.weights import PickleRequiredError, read_weights, save_weights
from fastsam_train.train.module import FastSAMModule
from fastsam_train.train.run import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fastsam_pt(tmp_path_factory) -> Path:
    torch.manual_seed(123)
    model = ultra.build_model("n", nc=1, reg_max=26)
    return ultra.export_ultralytics_checkpoint(model, tmp_path_factory.mktemp("w") / "FastSAM-n.pt",
                                               names={0: "object"})


def compose_finetune(out: Path, *overrides: str):
    return compose_config("train", "+experiment=finetune", "model=yolov8n_seg",
                          f"paths.output_dir={out}", *overrides)


def test_finetune_defaults_suit_finetuning():
    cfg = compose_finetune(Path("/tmp/unused"), "init_weights=x.pt", "data.shards=/tmp/s")
    scratch = compose_finetune(Path("/tmp/unused"), "init_weights=x.pt", "data.shards=/tmp/s",
                               "hyp=ultralytics")
    assert cfg.init_strict and cfg.hyp.lr0 == scratch.hyp.lr0 / 5 and cfg.hyp.lrf == 0.1
    assert cfg.hyp.warmup_epochs == 1.0 and cfg.hyp.warmup_bias_lr == 0.0
    assert cfg.trainer.max_epochs == 20 and cfg.hyp.mosaic == 1.0 and cfg.hyp.close_mosaic == 5
    rules = ("loss_rule", "augment_rule", "schedule_rule")  # what FastSAM's weights learned with
    assert all(cfg.hyp[r] == "v8_0_120" for r in rules) and cfg.hyp.optimizer == "SGD"
    default = compose_config("train", "+experiment=finetune", "data.shards=/tmp/s",
                             "init_weights=x.pt", "paths.output_dir=/tmp/u")
    assert default.model.scale == "x" and default.model.reg_max == 26


def test_every_format_initialises_the_same_weights(fastsam_pt, tmp_path):
    cfg = compose_finetune(tmp_path, f"init_weights={fastsam_pt}", "data.shards=/tmp/s")
    reference = read_weights(fastsam_pt, allow_pickle=True).state_dict
    copy = save_weights(read_weights(fastsam_pt, allow_pickle=True), tmp_path / "fastsam_n.pt")
    for path, pickle_ok in ((fastsam_pt, True), (copy, False)):
        module = FastSAMModule(model=cfg.model, hyp=cfg.hyp, val_nms=cfg.val_nms,
                               init_weights=str(path), allow_pickle=pickle_ok, init_strict=True)
        state = module.model.state_dict()
        assert set(state) == set(reference)
        assert all(torch.equal(state[k].float(), reference[k].float()) for k in reference)
    with pytest.raises(PickleRequiredError, match="allow_pickle"):
        FastSAMModule(model=cfg.model, hyp=cfg.hyp, val_nms=cfg.val_nms,
                      init_weights=str(fastsam_pt))
    with pytest.raises(ValueError, match="scale"):  # FastSAM-n weights into the x recipe
        FastSAMModule(model={**cfg.model, "scale": "s"}, hyp=cfg.hyp, val_nms=cfg.val_nms,
                      init_weights=str(copy), init_strict=False)
    with pytest.raises(ValueError, match="reg_max"):
        FastSAMModule(model={**cfg.model, "reg_max": 16}, hyp=cfg.hyp, val_nms=cfg.val_nms,
                      init_weights=str(copy), init_strict=True)
    partial = FastSAMModule(model={**cfg.model, "reg_max": 16}, hyp=cfg.hyp, val_nms=cfg.val_nms,
                            init_weights=str(copy), init_strict=False)  # head stays fresh
    state = partial.model.state_dict()
    assert torch.equal(state["model.0.conv.weight"], reference["model.0.conv.weight"].float())


def distance(a: dict, b: dict) -> float:
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a
                     if a[k].is_floating_point() and "running" not in k) ** 0.5)


def test_finetune_run_starts_from_the_weights(fastsam_pt, demo_shards, tmp_path,
                                              one_torch_thread):
    out = tmp_path / "run"
    metrics = train(compose_finetune(out, f"init_weights={fastsam_pt}", "allow_pickle=true",
                                     f"data.shards={demo_shards}", "trainer=cpu", "logger=csv",
                                     "data.imgsz=128", "data.batch_size=4", "data.num_workers=1",
                                     "trainer.max_epochs=1", "~callbacks.progress"))
    assert "val/mask_ar_100" in metrics
    tuned = read_weights(out / "checkpoints" / "last.ckpt").state_dict
    start = read_weights(fastsam_pt, allow_pickle=True).state_dict
    fresh = ultra.build_model("n", nc=1, reg_max=26).state_dict()
    assert distance(tuned, start) < 0.2 * distance(tuned, fresh)
    assert read_weights(out / "weights" / "last.pt", allow_pickle=True).config["reg_max"] == 26
