"""Composed training configs: the paper's recipe, the other experiments, bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fastsam_train.train.module import FastSAMModule

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def test_fastsam_x_is_the_papers_recipe():
    cfg = compose_train("+experiment=fastsam_x")
    assert (cfg.model.arch, cfg.model.scale, cfg.model.nc, cfg.model.reg_max) == \
        ("yolov8-seg", "x", 1, 26)
    assert cfg.data.imgsz == 1024 and cfg.trainer.max_epochs == cfg.hyp.epochs == 100
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == 32
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "16-mixed"
    hyp = cfg.hyp
    assert hyp.optimizer == "SGD" and hyp.lr0 == 0.01 and hyp.lrf == 0.01
    assert hyp.momentum == 0.937 and hyp.weight_decay == 0.0005
    assert (hyp.warmup_epochs, hyp.warmup_momentum, hyp.warmup_bias_lr) == (3.0, 0.8, 0.1)
    assert (hyp.box, hyp.cls, hyp.dfl) == (7.5, 0.5, 1.5)
    assert hyp.overlap_mask is False and hyp.mask_ratio == 4 and hyp.nbs == 64
    assert hyp.mosaic == 1.0 and hyp.fliplr == 0.5 and hyp.close_mosaic == 10
    assert "wandb" in cfg.logger


def test_fastsam_x_builds_the_right_head():
    cfg = compose_train("+experiment=fastsam_x")
    module = FastSAMModule(model=cfg.model, hyp=cfg.hyp)
    head = module.model.model[-1]
    assert head.reg_max == 26 and head.nc == 1
    assert abs(sum(p.numel() for p in module.model.parameters()) / 1e6 - 72.23) < 0.01
    assert module.hyp.overlap_mask is False and module.hyp.box == 7.5


def test_fastsam_s_and_default_demo():
    s = compose_train("+experiment=fastsam_s")
    assert s.model.scale == "s" and s.model.reg_max == 26 and s.data.imgsz == 1024
    demo = compose_train()
    assert demo.model.scale == "n" and demo.trainer.accelerator == "cpu"
    assert demo.data.make_demo is not None and demo.hyp.nbs == 8
    assert compose_train("+experiment=demo_cpu").model == demo.model


def test_bad_module_config_raises():
    cfg = compose_train()
    with pytest.raises(ValueError, match="on_nonfinite"):
        FastSAMModule(model=cfg.model, hyp=cfg.hyp, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="scale"):
        FastSAMModule(model={**cfg.model, "scale": "q"}, hyp=cfg.hyp)
    with pytest.raises(SyntaxError):
        FastSAMModule(model=cfg.model, hyp={**cfg.hyp, "not_a_hyperparameter": 1})
    with pytest.raises(ValueError, match="allow_pickle"):
        FastSAMModule(model=cfg.model, hyp=cfg.hyp, init_weights="yolov8x-seg.pt")
