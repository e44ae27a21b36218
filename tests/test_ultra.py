"""Tests of the ultralytics adapter on tiny synthetic data (CPU, scale n, imgsz 64-128)."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.engine.trainer import BaseTrainer

from fastsam_train import ultra


def synthetic_sample(seed: int, hw: tuple[int, int] = (96, 128), n: int = 2):
    """A BGR image with ``n`` filled quadrilaterals and their normalised polygons."""
    rng = np.random.default_rng(seed)
    image = np.full((*hw, 3), 40, np.uint8)
    polygons = []
    for _ in range(n):
        x0, y0 = rng.uniform(0.05, 0.45, 2)
        w, h = rng.uniform(0.3, 0.5, 2)
        poly = np.array([[x0, y0], [x0 + w, y0 + 0.05], [x0 + w, y0 + h], [x0, y0 + h]])
        pixels = (poly * [hw[1], hw[0]]).astype(np.int32)
        cv2.fillPoly(image, [pixels], tuple(int(c) for c in rng.integers(100, 255, 3)))
        polygons.append(poly.astype(np.float32))
    return image, polygons


def val_batch(imgsz: int = 64, n_images: int = 2, hyp=None) -> dict:
    transforms = ultra.build_val_transforms(imgsz, hyp or ultra.hyperparameters())
    samples = [
        transforms(ultra.label_dict(*synthetic_sample(i), imgsz, im_file=f"im{i}"))
        for i in range(n_images)
    ]
    batch = ultra.collate(samples)
    batch["img"] = batch["img"].float() / 255
    return batch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box OpenMP spinning made the
    20-step fit test 10x slower (38 s vs 4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_n():
    return ultra.build_model("n")


def n_params(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


# --- model ---------------------------------------------------------------------------------------
def test_build_model_head_and_size(model_n):
    head = model_n.model[-1]
    assert (head.reg_max, head.nc) == (26, 1)
    assert n_params(model_n) == 3.63
    assert model_n.args.box == 7.5 and model_n.args.overlap_mask is True


@pytest.mark.parametrize(("scale", "millions"), [("s", 12.32), ("x", 72.23)])
def test_build_model_scales(scale, millions):
    model = ultra.build_model(scale)
    assert model.model[-1].reg_max == 26
    assert n_params(model) == millions


def test_prototype_count_is_a_knob_and_round_trips():
    """An ablation of YOLACT's k: the head, the loss and the state-dict reader follow it."""
    torch.manual_seed(0)
    model = ultra.build_model("n", prototypes=16)
    assert model.model[-1].nm == 16
    model.train()
    out = model(torch.rand(1, 3, 64, 64))
    assert out["proto"].shape[1] == 16 and out["mask_coefficient"].shape[1] == 16
    total, _ = ultra.build_loss(model)(out, val_batch(imgsz=64, n_images=1))
    assert torch.isfinite(total)
    config = ultra.model_config_from_state_dict(model.state_dict())
    assert config["prototypes"] == 16 and config["reg_max"] == 26
    assert "prototypes" not in ultra.model_config_from_state_dict(
        ultra.build_model("n").state_dict())  # the default is implied (older files)


def test_build_model_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale"):
        ultra.build_model("q")


def test_hyperparameters_overrides():
    hyp = ultra.hyperparameters(mosaic=0.5, degrees=10.0)
    assert (hyp.mosaic, hyp.degrees, hyp.box, hyp.mask_ratio) == (0.5, 10.0, 7.5, 4)
    with pytest.raises(SyntaxError):
        ultra.hyperparameters(not_a_key=1)


# --- samples, transforms, batches ----------------------------------------------------------------
def test_label_dict_fields():
    image, polygons = synthetic_sample(0, hw=(96, 128))
    labels = ultra.label_dict(image, polygons, 64, im_file="a")
    assert labels["img"].shape == (48, 64, 3)
    assert labels["ori_shape"] == (96, 128) and labels["resized_shape"] == (48, 64)
    assert labels["cls"].shape == (2, 1) and labels["im_file"] == "a"
    inst = labels["instances"]
    assert inst.normalized and inst.segments.shape == (2, 1000, 2)
    xy = polygons[0]
    expected = [*(xy.min(0) + xy.max(0)) / 2, *(xy.max(0) - xy.min(0))]
    np.testing.assert_allclose(inst.bboxes[0], expected, atol=1e-6)  # xywh from the polygon


def test_label_dict_empty_and_long_polygons():
    image = np.zeros((50, 50, 3), np.uint8)
    assert len(ultra.label_dict(image, [], 64)["instances"]) == 0
    ring = np.stack([np.linspace(0.1, 0.9, 1500), np.full(1500, 0.5)], 1)
    assert ultra.label_dict(image, [ring], 64)["instances"].segments.shape == (1, 1501, 2)


def test_sample_buffer_is_bounded_and_copies():
    buffer = ultra.SampleBuffer(maxlen=3)
    for i in range(5):
        buffer.push(ultra.label_dict(*synthetic_sample(i), 64, im_file=str(i)))
    assert len(buffer) == 3 and list(buffer.buffer) == [0, 1, 2]
    assert buffer.get_image_and_label(0)["im_file"] == "2"
    copy = buffer.get_image_and_label(0)
    copy["instances"].denormalize(64, 64)
    assert buffer.get_image_and_label(0)["instances"].normalized


class CountingBuffer(ultra.SampleBuffer):
    calls = 0

    def get_image_and_label(self, index):
        self.calls += 1
        return super().get_image_and_label(index)


@pytest.mark.parametrize("overlap", [True, False])
def test_train_transforms_mosaic_over_buffer(overlap):
    random.seed(0)
    imgsz = 96
    hyp = ultra.hyperparameters(mosaic=1.0, overlap_mask=overlap)
    buffer = CountingBuffer(maxlen=8)
    transforms = ultra.build_train_transforms(buffer, imgsz, hyp)
    outs = [
        transforms(buffer.push(ultra.label_dict(*synthetic_sample(i), imgsz, im_file=str(i))))
        for i in range(6)
    ]
    assert buffer.calls >= 6 * 4  # push + 3 mosaic partners per sample
    for out in outs:
        assert out["img"].shape == (3, imgsz, imgsz) and out["img"].dtype == torch.uint8
        n = len(out["cls"])
        assert out["bboxes"].shape == (n, 4) and out["batch_idx"].shape == (n,)
        masks = out["masks"]
        assert masks.shape == ((1 if overlap else n), imgsz // 4, imgsz // 4)
        if overlap:
            assert int(masks.max()) == n  # instance indices 1..n
        else:
            assert bool((masks.flatten(1).sum(1) > 0).all())
    assert sum(len(o["cls"]) for o in outs) > 2 * len(outs)  # mosaic mixes in other images' objects


def test_val_transforms_and_collate_shapes():
    batch = val_batch(imgsz=64, n_images=3)
    assert batch["img"].shape == (3, 3, 64, 64)
    n = batch["cls"].shape[0]
    assert n == 6 and batch["bboxes"].shape == (6, 4) and batch["batch_idx"].tolist() == [
        0, 0, 1, 1, 2, 2,
    ]  # fmt: skip
    assert batch["masks"].shape == (3, 16, 16)  # overlap_mask: one index map per image
    assert 0 <= float(batch["bboxes"].min()) and float(batch["bboxes"].max()) <= 1
    assert batch["im_file"] == ("im0", "im1", "im2") and len(batch["ori_shape"]) == 3


# --- loss ----------------------------------------------------------------------------------------
def seeded_model_loss_and_batch():
    """A seeded yolov8n-seg in train mode, its loss and a 2-image 64 px batch."""
    torch.manual_seed(0)
    model = ultra.build_model("n")
    model.train()
    return model, ultra.build_loss(model), val_batch(imgsz=64, n_images=2)


def test_loss_finite_backward_and_batch_scaling():
    model, loss_fn, batch = seeded_model_loss_and_batch()
    total, items = loss_fn(model(batch["img"]), batch)
    assert total.ndim == 0 and torch.isfinite(total)
    assert set(items) == {"box", "seg", "cls", "dfl"}
    assert torch.allclose(total, 2 * sum(items.values()), rtol=1e-5)  # per-image items x batch
    total.backward()
    assert model.model[0].conv.weight.grad.abs().sum() > 0

    doubled = ultra.collate([*_split(batch), *_split(batch)])  # same images twice: same BN stats
    total2, items2 = loss_fn(model(doubled["img"]), doubled)
    assert torch.allclose(items2["seg"], items["seg"], rtol=1e-4)  # a mean over foreground anchors
    assert torch.allclose(total2, 4 * sum(items2.values()), rtol=1e-5)  # x batch size


def _split(batch: dict) -> list[dict]:
    """Undo ``collate`` for the keys the loss reads."""
    out = []
    for i in range(batch["img"].shape[0]):
        keep = batch["batch_idx"] == i
        out.append(
            {
                "img": batch["img"][i],
                "cls": batch["cls"][keep],
                "bboxes": batch["bboxes"][keep],
                "masks": batch["masks"][i : i + 1],
                "batch_idx": torch.zeros(int(keep.sum())),
            }
        )
    return out


def test_loss_decreases_when_fitting_one_batch():
    model, loss_fn, batch = seeded_model_loss_and_batch()
    optimizer = torch.optim.SGD(ultra.optimizer_param_groups(model, 0.01, 0.9, 5e-4))
    losses = []
    for _ in range(20):
        total, _ = loss_fn(model(batch["img"]), batch)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        losses.append(total.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


# --- optimizer, schedule, EMA --------------------------------------------------------------------
def test_param_groups_match_ultralytics(model_n):
    theirs = ultra.build_optimizer(model_n, "SGD", 0.01, 0.937, 5e-4).param_groups
    ours = ultra.optimizer_param_groups(model_n, 0.01, 0.937, 5e-4)
    assert [g["param_group"] for g in ours] == ["weight", "bn", "bias"]
    for a, b in zip(theirs, ours, strict=True):
        assert a["param_group"] == b["param_group"]
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert (a["weight_decay"], a["lr"], a["momentum"]) == (b["weight_decay"], 0.01, 0.937)
    adam = ultra.optimizer_param_groups(model_n, 0.002, 0.9, 0.0, name="AdamW")
    assert adam[0]["betas"] == (0.9, 0.999) and "momentum" not in adam[0]


@pytest.mark.parametrize("iterations", [100, 20_000])
def test_auto_optimizer_matches_ultralytics(model_n, iterations):
    trainer = SimpleNamespace(
        args=SimpleNamespace(lr0=0.01, optimizer="auto", warmup_bias_lr=0.1), data={"nc": 1}
    )
    optimizer = BaseTrainer.build_optimizer(trainer, model_n, "auto", 0.01, 0.937, 5e-4, iterations)
    choice = ultra.resolve_optimizer("auto", 0.01, 0.937, 0.1, iterations=iterations, nc=1)
    assert choice.name == type(optimizer).__name__ == trainer.args.optimizer
    assert (choice.lr, choice.warmup_bias_lr) == (trainer.args.lr0, trainer.args.warmup_bias_lr)
    assert ultra.resolve_optimizer("SGD", 0.01, 0.937, 0.1, 5, 1) == ("SGD", 0.01, 0.937, 0.1)
    assert ultra.optimizer_iterations(11_000, 16, 100) == 172 * 100


def test_schedule_and_warmup(model_n):
    assert ultra.lr_factor(0, 100, 0.01) == 1.0
    assert ultra.lr_factor(100, 100, 0.01) == pytest.approx(0.01)
    assert ultra.lr_factor(50, 100, 0.01, cos_lr=True) == pytest.approx(0.505)
    assert ultra.warmup_iterations(3.0, 100, 10) == 30
    assert ultra.warmup_iterations(3.0, 2, 10) == 10  # the last epoch is never warmup
    assert ultra.warmup_iterations(0.0, 100, 10) == 0

    hyp = ultra.hyperparameters()
    optimizer = torch.optim.SGD(ultra.optimizer_param_groups(model_n, 0.01, 0.937, 5e-4))
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: ultra.lr_factor(e, 100, hyp.lrf))
    by_kind = {g["param_group"]: g for g in optimizer.param_groups}
    assert ultra.apply_warmup(optimizer, 0, 30, 1.0, hyp)
    assert by_kind["bias"]["lr"] == pytest.approx(0.1) and by_kind["weight"]["lr"] == 0.0
    assert by_kind["weight"]["momentum"] == pytest.approx(0.8)
    assert ultra.apply_warmup(optimizer, 15, 30, 1.0, hyp)
    assert by_kind["weight"]["lr"] == pytest.approx(0.005)
    assert by_kind["bias"]["lr"] == pytest.approx(0.055)
    assert ultra.apply_warmup(optimizer, 30, 30, 1.0, hyp)
    assert all(g["lr"] == pytest.approx(0.01) for g in optimizer.param_groups)
    assert by_kind["bn"]["momentum"] == pytest.approx(0.937)
    assert not ultra.apply_warmup(optimizer, 31, 30, 1.0, hyp)


def test_model_ema_follows_model():
    model = ultra.build_model("n")
    ema = ultra.ModelEMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = ema.ema.model[0].conv.weight.clone()
    ema.update(model)
    after = ema.ema.model[0].conv.weight
    assert not torch.equal(before, after)
    assert (after - before).abs().max() <= 1.0


# --- checkpoints ---------------------------------------------------------------------------------
def test_export_loads_and_predicts_with_ultralytics(model_n, tmp_path):
    path = ultra.export_ultralytics_checkpoint(
        model_n, tmp_path / "fastsam_n.pt", names={0: "object"}, step=7
    )
    yolo = YOLO(str(path))
    assert yolo.task == "segment"
    assert yolo.model.model[-1].reg_max == 26 and yolo.model.names == {0: "object"}
    results = yolo.predict(np.zeros((64, 80, 3), np.uint8), imgsz=64, device="cpu", verbose=False)
    assert len(results) == 1 and hasattr(results[0], "masks")  # None when nothing is detected
    assert torch.load(path, weights_only=False)["fastsam_meta"] == {"step": 7}


def test_import_requires_allow_pickle(model_n, tmp_path):
    path = ultra.export_ultralytics_checkpoint(model_n, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        ultra.import_ultralytics_checkpoint(path, ultra.build_model("n"))
    with pytest.raises(FileNotFoundError):
        ultra.import_ultralytics_checkpoint(tmp_path / "absent.pt", model_n, allow_pickle=True)


def test_import_round_trips_weights_exactly(tmp_path):
    source = ultra.build_model("n")
    with torch.no_grad():
        source.model[0].conv.weight.add_(0.123456789)  # not representable in fp16
    path = ultra.export_ultralytics_checkpoint(source, tmp_path / "m.pt", half=False)
    target = ultra.build_model("n")
    report = ultra.import_ultralytics_checkpoint(path, target, allow_pickle=True)
    assert not (report.missing or report.unexpected or report.mismatched)
    theirs, ours = source.state_dict(), target.state_dict()
    assert len(report.loaded) == len(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)

    other = ultra.build_model("n", reg_max=16)
    report = ultra.import_ultralytics_checkpoint(path, other, allow_pickle=True)
    assert ("model.22.dfl.conv.weight", (1, 26, 1, 1), (1, 16, 1, 1)) in report.mismatched
    assert torch.equal(other.model[0].conv.weight, theirs["model.0.conv.weight"])
    with pytest.raises(RuntimeError, match="mismatched"):
        ultra.import_ultralytics_checkpoint(path, other, allow_pickle=True, strict=True)


def test_inference_network_matches_the_training_model():
    """The inference wrapper (Conv+BN folded, channels-last weights) computes what the plain
    eval-mode model computes: the same raw predictions and prototypes, in any input layout."""
    torch.manual_seed(0)
    model = ultra.build_model("n", reg_max=26)
    model.eval()
    for m in model.modules():  # non-trivial BN statistics, so folding them is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        (raw_ref, proto_ref), _ = model(x)
        network = ultra.inference_network(copy.deepcopy(model))
        kernels = [p for p in network.parameters() if p.dim() == 4 and p.shape[-1] > 1]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last)
                               and not p.is_contiguous() for p in kernels)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            raw, proto = network(inp)
            torch.testing.assert_close(raw, raw_ref, rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(proto, proto_ref, rtol=1e-4, atol=1e-4)


# --- 8.0.120 semantics and the lean Format (fastsam_train/ultra/v8_0.py) ------------------------
def test_polygon_masks_equal_ultralytics_full_image_masks():
    from ultralytics.data.utils import polygons2masks

    rng = np.random.default_rng(0)
    segments = np.concatenate([rng.uniform(0, 256, (20, 300, 2)),
                               rng.uniform(100, 110, (5, 300, 2))]).astype(np.float32)
    segments[:3] = np.clip(segments[:3] * 1.5 - 60, 0, 256)  # touching the borders
    for ratio in (1, 2, 4):
        ours = ultra.polygon_masks(segments, 256, 192, ratio)
        assert np.array_equal(ours, polygons2masks((256, 192), segments, 1, ratio)), ratio


def test_8_0_120_resampling_and_warp_helpers():
    from fastsam_train.ultra import v8_0

    rng = np.random.default_rng(1)
    rings = (rng.uniform(-50, 300, (30, 1000, 2))).astype(np.float32)
    assert np.array_equal(v8_0.reresample(rings), np.stack([v8_0.resample_ring(r) for r in rings]))
    m = np.eye(3, dtype=np.float32)
    m[:2] = [[0.7, 0.1, -30.25], [-0.1, 0.7, 12.5]]
    xy = np.concatenate((rings.reshape(-1, 2), np.ones((rings.size // 2, 1), np.float32)), 1) @ m.T
    np.testing.assert_allclose(v8_0.warp_points(rings, m),
                               (xy[:, :2] / xy[:, 2:3]).reshape(rings.shape), rtol=1e-6, atol=1e-4)
    boxes = v8_0.segment_boxes(rings, 256, 200)
    inside = (rings[1] >= 0).all(1) & (rings[1, :, 0] <= 256) & (rings[1, :, 1] <= 200)
    assert np.allclose(boxes[1], [*rings[1][inside].min(0), *rings[1][inside].max(0)])
    assert (v8_0.segment_boxes(rings - 1000, 256, 200) == 0).all()


def test_train_format_builds_no_semantic_masks():
    hyp = ultra.hyperparameters(overlap_mask=False, augment_rule="v8_0_120", mosaic=1.0)
    buffer = ultra.SampleBuffer(8)
    transforms = ultra.build_train_transforms(buffer, 96, hyp)
    random.seed(0)
    np.random.seed(0)
    for i in range(4):
        out = transforms(buffer.push(ultra.label_dict(*synthetic_sample(i, n=5), 96,
                                                      im_file=str(i), rule="v8_0_120")))
    assert "sem_masks" not in out and out["masks"].dtype == torch.uint8
    assert out["masks"].shape == (len(out["cls"]), 24, 24) and out["img"].shape == (3, 96, 96)
    assert ultra.label_dict(*synthetic_sample(0), 64, rule="v8_0_120")["instances"].segments.shape \
        == (2, 1000, 2)


def test_8_0_120_loss_differs_from_8_4_only_where_documented():
    """Same batch: cls is equal; the mask term differs (per-image normalisation)."""
    torch.manual_seed(0)
    model = ultra.build_model("n", hyp=ultra.hyperparameters(overlap_mask=False))
    model.train()
    batch = val_batch(imgsz=64, n_images=2, hyp=ultra.hyperparameters(overlap_mask=False))
    preds = model(batch["img"])
    _, old = ultra.build_loss(model, "v8_0_120")(preds, batch)
    _, new = ultra.build_loss(model, "v8_4")(preds, batch)
    assert torch.allclose(old["cls"], new["cls"]) and not torch.allclose(old["seg"], new["seg"])
    with pytest.raises(ValueError, match="rule"):
        ultra.build_loss(model, "v9")
