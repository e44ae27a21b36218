"""Composed training configs: the paper's recipe, the other experiments, bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import compose_config
from omegaconf import OmegaConf

from fastsam_train.train.module import FastSAMModule

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_train(*overrides: str):
    cfg = compose_config("train", "paths.output_dir=/tmp/unused", *overrides)
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
    # ultralytics 8.0.120's values (default.yaml) and its "auto": SGD, bias warmup from 0
    assert hyp.optimizer == "auto" and hyp.lr0 == 0.01 and hyp.lrf == 0.01
    assert hyp.momentum == 0.937 and hyp.weight_decay == 0.0005
    assert (hyp.warmup_epochs, hyp.warmup_momentum, hyp.warmup_bias_lr) == (3.0, 0.8, 0.1)
    assert (hyp.box, hyp.cls, hyp.dfl) == (7.5, 0.5, 1.5)
    assert hyp.overlap_mask is False and hyp.mask_ratio == 4 and hyp.nbs == 64
    assert hyp.mosaic == 1.0 and hyp.fliplr == 0.5 and hyp.close_mosaic == 0
    assert {hyp[k] for k in ("loss_rule", "optimizer_rule", "schedule_rule",
                             "augment_rule")} == {"v8_0_120"}
    assert "wandb" in cfg.logger


def test_auto_resolves_as_the_authors_trainer():
    """2 % of SA-1B (~220k images), batch 32, 100 epochs: 8.0.120's auto picks SGD(0.01, 0.9)
    and starts the bias warmup at 0; 8.4's rule would pick MuSGD."""
    from fastsam_train import ultra

    iterations = ultra.optimizer_iterations(220_000, 32, 100)
    assert ultra.resolve_optimizer("auto", 0.01, 0.937, 0.1, iterations, 1, rule="v8_0_120") \
        == ("SGD", 0.01, 0.9, 0.0)
    assert ultra.resolve_optimizer("auto", 0.01, 0.937, 0.1, iterations, 1)[0] == "MuSGD"
    assert ultra.warmup_iterations(3.0, 100, 6875, rule="v8_0_120") == 20625
    assert ultra.warmup_iterations(3.0, 100, 10, rule="v8_0_120") == 100  # the 100-batch floor
    # batch 24: the ramp goes towards 64 / 24 = 2.67 (8.0.120) or round(2.67) = 3 (8.4)
    assert ultra.accumulate_steps(8, 10, 64, 24, rule="v8_0_120") == 2  # 2.33
    assert ultra.accumulate_steps(8, 10, 64, 24) == 3  # 2.6
    assert ultra.accumulate_steps(11, 10, 64, 24, rule="v8_0_120") == 3


def test_recipe_departures_are_logged_once_each(caplog):
    from fastsam_train.train.recipe import departures, log_departures

    assert departures(compose_train("+experiment=fastsam_x")) == []
    assert departures(compose_train("+experiment=fastsam_s")) == []
    cfg = compose_train("+experiment=fastsam_x", "hyp.close_mosaic=10")
    with caplog.at_level("WARNING"):
        lines = log_departures(cfg)
    assert len(lines) == 1 and "hyp.close_mosaic=10" in lines[0] and "authors: 0" in lines[0]
    assert [r.getMessage() for r in caplog.records if "departure" in r.getMessage()] == lines
    two = departures(compose_train("+experiment=fastsam_x", "trainer.num_nodes=2",
                                   "model.reg_max=16"))
    assert [line.split(": ")[1].split(" ")[0] for line in two] == \
        ["model.reg_max=16", "global_batch=64"]
    assert departures(compose_train()) == []  # the demo declares no reference recipe


def test_recipe_covers_the_fastsam_hyp_file_and_the_readme_table():
    recipe = OmegaConf.load(CONF / "recipe" / "fastsam_8_0_120.yaml")
    keys = {e.key for e in recipe["values"]}
    hyp_file = OmegaConf.load(CONF / "hyp" / "fastsam_8_0_120.yaml")
    assert {f"hyp.{k}" for k in hyp_file if k not in ("epochs", "copy_paste_mode")} <= keys
    readme = (CONF.parent / "README.md").read_text()
    for entry in recipe["values"]:
        assert f"| `{entry.key}` |" in readme, entry.key


def test_fastsam_x_builds_the_right_head():
    cfg = compose_train("+experiment=fastsam_x")
    module = FastSAMModule(model=cfg.model, hyp=cfg.hyp, val_nms=cfg.val_nms)
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
        FastSAMModule(model=cfg.model, hyp=cfg.hyp, val_nms=cfg.val_nms, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="scale"):
        FastSAMModule(model={**cfg.model, "scale": "q"}, hyp=cfg.hyp, val_nms=cfg.val_nms)
    with pytest.raises(SyntaxError):
        FastSAMModule(model=cfg.model, hyp={**cfg.hyp, "not_a_hyperparameter": 1},
                      val_nms=cfg.val_nms)
    with pytest.raises(FileNotFoundError, match="yolov8x-seg.pt"):
        FastSAMModule(model=cfg.model, hyp=cfg.hyp, val_nms=cfg.val_nms,
                      init_weights="yolov8x-seg.pt")


ABLATIONS = {"reg_max": ("model.reg_max", "16,26"), "data": ("sa1b_percent", "1,2,4"),
             "imgsz": ("data.imgsz", "640,1024"), "scale": ("model", "yolov8s_seg,yolov8x_seg"),
             "overlap_mask": ("hyp.overlap_mask", "false,true"),
             "prototypes": ("model.prototypes", "16,32,64")}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablations_are_the_paper_recipe_with_one_swept_knob(name):
    cfg = compose_config("train", f"+experiment=ablate_{name}", hydra_config=True)
    key, values = ABLATIONS[name]
    assert dict(cfg.hydra.sweeper.params) == {key: values}
    assert cfg.task_name == f"ablate_{name}" and cfg.model.scale == "x"
    assert cfg.model.reg_max == 26 and cfg.trainer.max_epochs == 100


def test_data_percent_picks_the_converted_sample():
    assert compose_train("+experiment=fastsam_x").data.shards.endswith("/sa1b_2pct")
    assert compose_train("+experiment=fastsam_x", "sa1b_percent=4").data.shards.endswith(
        "/sa1b_4pct")


def test_slurm_launcher_asks_for_the_trainer_layout(monkeypatch):
    from fastsam_train import resolvers

    resolvers.register()
    monkeypatch.setenv("FASTSAM_SLURM_PARTITION", "gpu-long")
    gpu = compose_config("train", "hydra/launcher=slurm", "+experiment=fastsam_x",
                         "trainer.num_nodes=2", hydra_config=True)
    cpu = compose_config("train", "hydra/launcher=slurm", "trainer=ddp_sim", hydra_config=True)
    local = compose_config("train", "hydra/launcher=local", hydra_config=True)
    launcher = OmegaConf.to_container(gpu.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    assert launcher["partition"] == "gpu-long" and launcher["account"] is None
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["max_num_timeout"] > 0
    cpu_launcher = OmegaConf.to_container(cpu.hydra.launcher, resolve=True)
    assert cpu_launcher["tasks_per_node"] == 2 and cpu_launcher["gpus_per_node"] is None
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
