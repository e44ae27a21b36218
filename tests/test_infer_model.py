"""Inference with real (tiny, random) networks: checkpoint formats, everything mode, ONNX, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import val_nms
from omegaconf import OmegaConf

from fastsam_train import ultra
from fastsam_train.cli import main
from fastsam_train.infer import (
    PickleRequiredError,
    Predictor,
    build_network,
    read_weights,
    save_weights,
)
from fastsam_train.masks import decode_rle
from fastsam_train.train.module import FastSAMModule

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26}
SMALL = ["--imgsz", "128", "--conf", "0.001", "--max-det", "30"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The same random yolov8n-seg as a Lightning .ckpt (written the way FastSAMModule saves:
    plain-dict hyperparameters, EMA beside the weights), an ultralytics .pt (the module's own
    export) and a weights-only file. The EMA's first conv differs from the raw model's."""
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    module = FastSAMModule(model=CONFIG, hyp={"grad_clip": 10.0, "ema_decay": 0.9999,
                                              "ema_tau": 2000}, val_nms=val_nms())
    module.ema = ultra.ModelEMA(module.model)
    with torch.no_grad():
        module.ema.ema.model[0].conv.weight.add_(0.01)
    ckpt = {"epoch": 0, "global_step": 1, "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, out / "last.ckpt")
    pt = ultra.export_ultralytics_checkpoint(module.ema.ema, out / "last.pt", names={0: "object"})
    weights = save_weights(read_weights(out / "last.ckpt"), out / "weights.pt")
    return {"ckpt": out / "last.ckpt", "pt": pt, "weights": weights}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    image = np.full((90, 150, 3), 60, np.uint8)
    cv2.rectangle(image, (20, 15), (80, 70), (30, 200, 40), -1)
    cv2.circle(image, (115, 45), 25, (220, 60, 30), -1)
    image = (image + rng.integers(0, 20, image.shape)).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "shapes.png"
    cv2.imwrite(str(path), image)
    return path


# --- checkpoints --------------------------------------------------------------------------------
def test_lightning_checkpoint_is_weights_only_and_gives_the_ema(files):
    torch.load(files["ckpt"], map_location="cpu", weights_only=True)  # must not raise
    w = read_weights(files["ckpt"])
    assert w.source == "lightning-ema" and w.config == {**CONFIG, "prototypes": 32}
    raw = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    key = "model.0.conv.weight"
    assert torch.allclose(w.state_dict[key], raw["model." + key] + 0.01)


def test_pickled_checkpoint_needs_explicit_consent(files):
    with pytest.raises(PickleRequiredError, match="allow_pickle=True") as err:
        read_weights(files["pt"])
    assert "ultralytics.nn.tasks.SegmentationModel" in str(err.value)
    w = read_weights(files["pt"], allow_pickle=True)
    assert w.source == "ultralytics-pickle" and w.config == {**CONFIG, "prototypes": 32}
    ema = read_weights(files["ckpt"]).state_dict
    assert all(torch.allclose(w.state_dict[k].float(), ema[k].float(), atol=2e-3, rtol=1e-3)
               for k in ema)  # FP16


def test_weights_only_file_round_trips(files):
    w = read_weights(files["weights"])
    assert w.source == "weights" and w.config == {**CONFIG, "prototypes": 32}
    torch.load(files["weights"], weights_only=True)


def test_checkpoint_with_foreign_objects_is_refused_without_consent(files, tmp_path):
    """E.g. hyperparameters saved as an OmegaConf object would make weights_only fail."""
    ckpt = torch.load(files["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["extra"] = OmegaConf.create({"a": 1})
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(PickleRequiredError, match="omegaconf"):
        read_weights(tmp_path / "odd.ckpt")
    assert read_weights(tmp_path / "odd.ckpt", allow_pickle=True).source == "pickled lightning-ema"


def test_bad_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, PickleRequiredError)):
        read_weights(tmp_path / "junk.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        read_weights(tmp_path / "other.pt")


# --- everything mode on a real network ----------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return Predictor.from_weights(files["ckpt"], imgsz=128, conf=0.001, iou=0.7, max_det=40)


def test_everything_mode_batch_of_odd_sizes(predictor):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (97, 151, 3), dtype=np.uint8),
              rng.integers(0, 255, (130, 70, 3), dtype=np.uint8)]
    segs = predictor.everything(images, probs=True)
    for seg, image in zip(segs, images, strict=True):
        h, w = image.shape[:2]
        assert 0 < len(seg) <= 40 and seg.masks.shape == (len(seg), h, w)
        assert seg.masks.dtype == torch.bool and seg.probs.shape == seg.masks.shape
        assert torch.equal(seg.masks, seg.probs > 0.5)
        assert (seg.boxes[:, 2] <= w).all() and (seg.boxes[:, 3] <= h).all()
        assert (seg.boxes >= 0).all() and (seg.scores.diff() <= 0).all()
        assert seg.probs.amax() <= 1 and seg.probs.amin() >= 0


def test_all_formats_predict_the_same(files, predictor, image_file):
    ref = predictor.everything(image_file)[0]
    for name, allow in (("weights", False), ("pt", True)):
        other = Predictor.from_weights(files[name], allow, **vars(predictor.options))
        seg = other.everything(image_file)[0]
        assert len(seg) == len(ref)
        iou = (seg.masks & ref.masks).flatten(1).sum(1) / (seg.masks | ref.masks).flatten(1) \
            .sum(1).clamp(min=1)
        assert iou.mean() > 0.99  # the .pt stores FP16 weights


def test_onnx_matches_pytorch(files, image_file, tmp_path):
    pytest.importorskip("onnxruntime")
    from fastsam_train.infer.onnx import export_onnx

    network = build_network(read_weights(files["ckpt"]))
    path = export_onnx(network, tmp_path / "n.onnx", imgsz=128)
    onnx_predictor = Predictor.from_onnx(path, conf=0.005, iou=0.7, max_det=30)
    torch_predictor = Predictor(network, onnx_predictor.options)
    x = torch.rand(2, 3, 128, 128)
    (raw_t, proto_t), (raw_o, proto_o) = network(x), onnx_predictor.network(x)
    torch.testing.assert_close(raw_o, raw_t, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(proto_o, proto_t, atol=1e-4, rtol=1e-4)
    a, b = (p.everything(image_file, probs=True)[0] for p in (torch_predictor, onnx_predictor))
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.probs, b.probs, atol=1e-3, rtol=0)
    inter = a.masks.flatten(1).float() @ b.masks.flatten(1).float().T
    union = a.masks.flatten(1).sum(1)[:, None] + b.masks.flatten(1).sum(1)[None] - inter
    assert (inter / union.clamp(min=1)).amax(1).mean() >= 0.99


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_everything_and_prompts(files, image_file, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(image_file), "--weights", str(files["ckpt"]), *SMALL,
                 "--out", str(out)]) == 0
    doc = json.loads((out / "shapes.json").read_text())
    assert (doc["height"], doc["width"]) == (90, 150) and doc["annotations"]
    masks = decode_rle([a["segmentation"] for a in doc["annotations"]])
    assert masks.shape[1:] == (90, 150)
    assert cv2.imread(str(out / "shapes.png")).shape == (90, 150, 3)
    assert main(["predict", str(image_file), "--weights", str(files["weights"]), *SMALL,
                 "--points", "50,40", "100,45", "--labels", "1", "0", "--boxes", "20,15,80,70",
                 "--out", str(out)]) == 0
    prompts = [a["prompt"] for a in json.loads((out / "shapes.json").read_text())["annotations"]]
    assert prompts[0] == "box 0" and prompts[1:] == ["points"]


def test_cli_mask_protocols(files, image_file, tmp_path, capsys):
    """``--mask-protocol official`` runs ultralytics 8.0.120's mask assembly (tested against a
    reference in test_infer_official) and the JSON says so; ``exact`` is the default. Same
    detections either way (random weights: their masks fill their boxes, so masks agree too)."""
    docs = {}
    for protocol in (None, "official"):
        out = tmp_path / str(protocol)
        extra = ["--mask-protocol", protocol] if protocol else []
        assert main(["predict", str(image_file), "--weights", str(files["ckpt"]), *SMALL,
                     *extra, "--out", str(out), "--no-overlay"]) == 0
        docs[protocol] = json.loads((out / "shapes.json").read_text())
    assert docs[None]["mask_protocol"] == "exact"
    assert docs["official"]["mask_protocol"] == "official"
    assert [a["score"] for a in docs[None]["annotations"]] == \
        [a["score"] for a in docs["official"]["annotations"]]
    assert cli(["predict", str(image_file), "--weights", str(files["ckpt"]),
                "--mask-protocol", "ultralytics"]) == 2
    assert "invalid choice: 'ultralytics' (choose from 'exact', 'official')" in \
        capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--points", "150,10"], "outside the 150x90 image"),
    (["--points", "10,10", "--labels", "1", "0"], "1 points but 2 labels"),
    (["--boxes", "50,10,20,40"], "needs x1 < x2"),
    (["--text", " "], "non-empty"),
])
def test_cli_rejects_bad_prompts(files, image_file, capsys, extra, message):
    assert cli(["predict", str(image_file), "--weights", str(files["ckpt"]), *extra]) == 2
    assert message in capsys.readouterr().err


def cli(argv: list[str]) -> int:
    """``main``'s exit code, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_cli_errors_for_files(files, image_file, tmp_path, capsys):
    assert main(["predict", str(image_file), "--weights", str(files["pt"])]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", str(tmp_path / "bad.jpg"), "--weights", str(files["ckpt"])]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_cli_convert_and_export(files, image_file, tmp_path):
    dest = tmp_path / "converted.pt"
    assert main(["convert-weights", str(files["pt"]), str(dest), "--allow-pickle"]) == 0
    torch.load(dest, weights_only=True)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export-onnx", "--weights", str(dest), "--imgsz", "64", "--out",
                 str(onnx_path)]) == 0
    assert main(["predict", str(image_file), "--onnx", str(onnx_path), "--conf", "0.001",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "shapes.json").is_file()


@pytest.mark.slow
def test_real_training_run_outputs_load(tmp_path):
    """train.py's own last.ckpt loads with weights_only=True, its weights/last.pt with consent."""
    run = tmp_path / "run"
    subprocess.run([sys.executable, str(REPO / "train.py"), "trainer.max_epochs=1",
                    "data.imgsz=64", f"hydra.run.dir={run}",
                    f"data.make_demo.shards={tmp_path / 'demo' / 'shards'}", "~callbacks.progress"],
                   cwd=REPO, check=True, capture_output=True)
    torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    a = Predictor.from_weights(run / "checkpoints" / "last.ckpt", imgsz=64, conf=0.001)
    b = Predictor.from_weights(run / "weights" / "last.pt", True, imgsz=64, conf=0.001)
    image = np.full((48, 64, 3), 100, np.uint8)
    assert len(a.everything(image)[0]) == len(b.everything(image)[0])
