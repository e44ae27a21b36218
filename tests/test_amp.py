"""Mixed precision: the GPU config's AMP path (Lightning's MixedPrecision plugin with a real
GradScaler), driven on the CPU, must make the same optimizer update as fp32.

ultralytics 8.0.120 steps as ``scaler.unscale_ -> clip_grad_norm_(10) -> scaler.step ->
scaler.update``. Clipping before Lightning's unscale would see gradients times the loss scale
and shrink the update by that factor (the bug this guards against)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import val_nms
from lightning.pytorch.plugins.precision import MixedPrecision

from fastsam_train.train.datamodule import ShardDataModule
from fastsam_train.train.module import FastSAMModule

HYP = {"warmup_epochs": 0.0, "nbs": 4, "mosaic": 0.0, "fliplr": 0.0, "hsv_h": 0.0,
       "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "grad_clip": 10.0,
       "ema_decay": 0.9999, "ema_tau": 2000, "lr0": 0.01, "epochs": 1, "optimizer": "SGD"}
MODEL = {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26, "prototypes": 32}


def one_step(shards, precision_plugin=None) -> tuple[dict, dict, FastSAMModule]:
    """Weights before and after one optimizer step on the same batch, and the module."""
    torch.manual_seed(0)
    module = FastSAMModule(MODEL, HYP, overlay_samples=0, val_nms=val_nms())
    before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    data = ShardDataModule(str(shards), imgsz=96, batch_size=4, num_workers=0, seed=0,
                           max_val_images=0, hyp=HYP)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1,
                        limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        plugins=[precision_plugin] if precision_plugin else None)
    trainer.fit(module, datamodule=data)
    after = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    return before, after, module


def update(before: dict, after: dict) -> torch.Tensor:
    return torch.cat([(after[k] - before[k]).flatten() for k in before
                      if before[k].is_floating_point() and "running" not in k])


def test_amp_update_equals_fp32_clipped_update(demo_shards, one_torch_thread):
    b32, a32, m32 = one_step(demo_shards)
    reference = update(b32, a32)
    # the true gradient norm is above the clip: the clip is what this step depends on
    assert m32.last_opt_step == 0 and reference.norm() > 0
    # 2**8: this random-init batch has gradients up to ~90, so 2**12 and more overflow fp16
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    b16, a16, m16 = one_step(demo_shards, plugin)
    assert scaler.get_scale() == 2.0**8, "the step overflowed and was skipped"
    for k in b32:  # identical start
        torch.testing.assert_close(b16[k], b32[k])
    amp = update(b16, a16)
    # fp16 forward/backward rounding moves individual entries by a few %; the bug (clipping
    # scaled gradients) would make the AMP update 2**8 times smaller
    cosine = torch.nn.functional.cosine_similarity(amp, reference, dim=0)
    ratio = amp.norm() / reference.norm()
    assert cosine > 0.99 and abs(ratio - 1) < 0.01, (float(cosine), float(ratio))
    assert m16.ema.updates == m32.ema.updates == 1


def test_clip_sees_unscaled_gradients(demo_shards, one_torch_thread, monkeypatch):
    """The norm the clip measures under AMP is the true one (within fp16 error), and > 10."""
    seen: list[float] = []
    original = FastSAMModule.clip_gradients

    def spy(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    monkeypatch.setattr(FastSAMModule, "clip_gradients", spy)
    one_step(demo_shards)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    one_step(demo_shards, MixedPrecision("16-mixed", "cpu", scaler=scaler))
    assert len(seen) == 2 and seen[0] > 10, seen
    assert seen[1] == pytest.approx(seen[0], rel=0.05), seen


def test_overflowing_step_is_skipped_as_ultralytics(demo_shards, one_torch_thread):
    """An fp16 overflow: GradScaler skips the optimizer step and halves its scale; the EMA still
    updates (8.0.120 calls ema.update after every scaler.step) and the weights are unchanged."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    before, after, module = one_step(demo_shards, MixedPrecision("16-mixed", "cpu",
                                                                 scaler=scaler))
    assert scaler.get_scale() == 2.0**23
    assert update(before, after).abs().max() == 0
    assert module.ema.updates == 1 and module.last_opt_step == 0
