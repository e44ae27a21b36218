"""The evaluation entry point end to end: Hydra config, dataset registry, the inference loop on
the 2 real COCO sample images (a test-double predictor, and a tiny random FastSAM), the report
files, re-evaluation from saved predictions, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import predictions
from helpers import compose_eval
from omegaconf import OmegaConf

import eval.pipeline as pipeline
import eval.run as eval_run
from eval.core import EmptyPredictionsError, to_prediction
from eval.datasets import get_dataset, load_gt
from eval.report import read_predictions

TASKS = ("coco_ar", "lvis_ar", "coco_instance", "lvis_instance")


def sample_overrides(shared_data: Path, out: Path, task: str = "coco_ar") -> list[str]:
    sample = shared_data / "coco_sample"
    return [f"task={task}", f"task.annotation={sample / 'panoptic_coco_detection_format.json'}",
            f"task.image_root={sample / 'input_images'}", f"paths.output_dir={out}",
            "model.weights=unused.pt", "progress=false"]


class GroundTruthPredictor:
    """Test double for the model: each image's objects (some moved, some missing) plus random
    boxes, as dense masks at the original size, images expected in id order."""

    def __init__(self, gt: dict, empty: bool = False) -> None:
        self.outputs = predictions(gt, extra=30, seed=7)
        self.order = iter(sorted(im["id"] for im in gt["images"]))
        self.sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
        self.empty, self.calls = empty, 0

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        self.calls += 1
        outs = []
        for image in images:
            iid = next(self.order)
            assert image.shape == (*self.sizes[iid], 3) and image.dtype == np.uint8
            out = self.outputs[iid]
            masks = np.stack([_decode(r) for r in out["rles"]])
            if self.empty:
                masks, out = masks[:0], {"boxes": out["boxes"][:0], "scores": out["scores"][:0]}
            outs.append({"masks": masks, "boxes": out["boxes"], "scores": out["scores"]})
        return outs


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_every_task_composes_and_a_task_is_required():
    for task in TASKS:
        cfg = compose_eval(f"task={task}", "paths.output_dir=/tmp/unused")
        assert cfg.task.name == task and cfg.task.kind in ("proposals", "instance")
    assert compose_eval("task=lvis_ar").task.frequency_groups is True
    assert compose_eval("task=lvis_instance").task.max_dets == 300
    with pytest.raises(Exception, match="task"):
        compose_eval()


def test_tasks_name_their_pipeline_and_evaluator(tmp_path):
    """Every task builds its evaluator from ``task.evaluator`` (task keys interpolated); a
    ``_target_`` outside the eval package is refused before anything runs."""
    from eval.proposals import ProposalEvaluator

    gt = {"images": [{"id": 1, "height": 4, "width": 4}], "categories": [{"id": 1}],
          "annotations": []}
    for task in TASKS:
        assert compose_eval(f"task={task}").task.pipeline._target_ == \
            "eval.pipeline.evaluate_dataset"
    cfg = compose_eval("task=coco_ar", "task.max_dets=[5]", "task.box_source=mask")
    ev = pipeline.build(cfg.task.evaluator)(gt=gt, model=cfg.model)
    assert isinstance(ev, ProposalEvaluator) and ev.max_dets == (5,) and ev.box_source == "mask"
    edges = compose_eval("task=bsds_edges", "task.nthresh=7", "task.workers=1")
    assert edges.task.pipeline._target_ == "eval.pipeline.evaluate_edges"
    ev = pipeline.build(edges.task.evaluator)
    assert ev.kwargs == {"nthresh": 7, "max_dist": 0.0075, "exact": True} and ev.workers == 1
    bad = compose_eval(*sample_overrides(Path("/nope"), tmp_path),
                       "task.pipeline._target_=os.system")
    with pytest.raises(ValueError, match="eval package, got 'os.system'"):
        eval_run.run(bad)


def test_coco_ar_end_to_end_and_reevaluation(shared_data, tmp_path, monkeypatch):
    cfg = compose_eval(*sample_overrides(shared_data, tmp_path / "run"), "batch_size=2")
    gt = load_gt(Path(cfg.task.annotation))
    fake = GroundTruthPredictor(gt)
    monkeypatch.setattr(pipeline, "build_predictor", lambda model_cfg, *a: fake)
    metrics = eval_run.run(cfg)
    out = tmp_path / "run"
    for name in ("metrics.json", "report.md", "ar_curve.png", "predictions.jsonl.gz"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["box/ar_1000"] == pytest.approx(metrics["box/ar_1000"])
    assert saved["curves"]["mask"]["k"][-1] == 1000 and saved["dataset_images"] == 2
    assert 0.5 < metrics["mask/ar_1000"] < 1 and metrics["images"] == 2 and fake.calls == 1
    report = (out / "report.md").read_text()
    assert "| FastSAM (paper) | 15.7 | 47.3 | 63.7 | 32.… |" in report  # AUC cut in the text
    assert "| EdgeBoxes (paper) | 7.4 | 17.8 | 33.8 | 13.… |" in report
    assert f"| **ours (box)** | {100 * metrics['box/ar_10']:.1f} |" in report
    assert "mask protocol: **official**" in report and "cut in text" in report
    again = eval_run.run(compose_eval(*sample_overrides(shared_data, tmp_path / "re"),
                                      f"predictions={out / 'predictions.jsonl.gz'}"))
    assert again == metrics


def test_coco_instance_end_to_end(shared_data, tmp_path, monkeypatch):
    gt = load_gt(shared_data / "coco_sample" / "panoptic_coco_detection_format.json")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.5 + 0.01 * (k % 40)} for k, a in enumerate(gt["annotations"])
            if not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    cfg = compose_eval(*sample_overrides(shared_data, tmp_path / "run", "coco_instance"),
                       f"task.detections={tmp_path / 'dets.json'}", "logger=csv")
    monkeypatch.setattr(pipeline, "build_predictor",
                        lambda model_cfg, *a: GroundTruthPredictor(gt))
    metrics = eval_run.run(cfg)
    # two pools of one run: official (score > 0.4, <= 300 masks) and proposals (all masks)
    assert 0.3 < metrics["mask_proposals/ap"] <= 1 and metrics["mask/boxes"] == len(dets)
    assert 0 < metrics["mask/ap"] < metrics["mask_proposals/ap"]
    logged = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "coco_instance/mask/ap" in logged
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| FastSAM (paper) | 37.9 | 23.9 | 43.4 | 50.0 | — | — |" in report
    assert f"| **FastSAM (ours, official pool: conf 0.4, <= 300 masks)** | " \
        f"{100 * metrics['mask/ap']:.1f} |" in report
    assert f"| **FastSAM (ours, proposals pool: conf 0.001, <= 1000 masks)** | " \
        f"{100 * metrics['mask_proposals/ap']:.1f} |" in report


def test_bad_input_fails_before_or_instead_of_a_zero(shared_data, tmp_path, monkeypatch):
    gt = load_gt(shared_data / "coco_sample" / "panoptic_coco_detection_format.json")
    monkeypatch.setattr(pipeline, "build_predictor",
                        lambda model_cfg, *a: GroundTruthPredictor(gt, empty=True))
    with pytest.raises(EmptyPredictionsError, match="no proposals"):
        eval_run.run(compose_eval(*sample_overrides(shared_data, tmp_path / "a")))
    # a missing image file: named, before the model is ever called
    images = tmp_path / "images"
    shutil.copytree(shared_data / "coco_sample" / "input_images", images)
    missing = sorted(images.iterdir())[0]
    missing.unlink()
    fake = GroundTruthPredictor(gt)
    monkeypatch.setattr(pipeline, "build_predictor", lambda model_cfg, *a: fake)
    with pytest.raises(FileNotFoundError, match=missing.name):
        eval_run.run(compose_eval(*sample_overrides(shared_data, tmp_path / "b"),
                                  f"task.image_root={images}"))
    assert fake.calls == 0
    # detections with class-agnostic category ids (FastSAM issue #183's silent 0.000)
    (tmp_path / "dets.json").write_text(json.dumps(
        [{"image_id": 142238, "category_id": 0, "bbox": [0, 0, 10, 10], "score": 1.0}]))
    # an instance pool the model's run cannot serve, named at config time
    cfg = compose_eval(*sample_overrides(shared_data, tmp_path / "d", "coco_instance"),
                       f"task.detections={tmp_path / 'dets.json'}", "model.conf=0.4")
    with pytest.raises(ValueError, match=r"task.pools.proposals .conf 0.001, max_det 1000. is "
                                         r"not inside the model's run .model.conf 0.4"):
        eval_run.run(cfg)
    with pytest.raises(ValueError, match="category ids are not in the ground truth"):
        eval_run.run(compose_eval(*sample_overrides(shared_data, tmp_path / "c", "coco_instance"),
                                  f"task.detections={tmp_path / 'dets.json'}"))


def test_prediction_checks():
    image = {"id": 5, "height": 40, "width": 60}
    ok = {"masks": np.zeros((2, 40, 60), bool), "boxes": np.zeros((2, 4)), "scores": [0.1, 0.9]}
    pred = to_prediction(image, ok)
    assert list(pred.scores) == [0.9, 0.1] and pred.rles[0]["size"] == [40, 60]
    with pytest.raises(ValueError, match="original image size"):
        to_prediction(image, {**ok, "masks": np.zeros((2, 20, 30), bool)})
    with pytest.raises(ValueError, match="xyxy"):
        to_prediction(image, {**ok, "boxes": np.array([[10, 10, 5, 5], [0, 0, 1, 1]])})
    with pytest.raises(ValueError, match="2 scores, 1 boxes"):
        to_prediction(image, {**ok, "boxes": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="exactly one of masks / rles"):
        to_prediction(image, {"boxes": np.zeros((0, 4)), "scores": []})
    many = np.zeros((600, 40, 60), bool)  # > 255: pycocotools' area() overflows on NumPy 2
    for k in range(600):
        many[k, k % 40, : 1 + k % 60] = True
    big = to_prediction(image, {"masks": many, "boxes": np.zeros((600, 4)),
                                "scores": np.linspace(1, 0, 600)}, max_dets=500)
    assert len(big) == 500 and list(big.areas[:3]) == [1, 2, 3]


def test_saved_predictions_for_another_split_are_refused(tmp_path):
    from eval.core import Prediction
    from eval.report import PredictionWriter

    writer = PredictionWriter(tmp_path / "p.jsonl.gz")
    writer.reset()
    writer.process([], [Prediction(7, 4, 4, [], np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4)),
                                   np.zeros(0))])
    writer.evaluate()
    with pytest.raises(ValueError, match="image id 7 is not in the dataset"):
        list(read_predictions(tmp_path / "p.jsonl.gz", {8: {"id": 8, "height": 4, "width": 4}}))


def test_dataset_registry_and_lvis_image_layout(shared_data, tmp_path, monkeypatch):
    lvis = load_gt(shared_data / "lvis_sample" / "lvis_v0.5_val_100.json")
    (tmp_path / "lvis").mkdir()
    (tmp_path / "lvis" / "lvis_v1_val.json").write_text(json.dumps(lvis))
    ds = get_dataset("lvis_v1_val", root=tmp_path)
    image = ds.images()[0]
    split, name = image["coco_url"].split("/")[-2:]
    assert ds.kind == "lvis" and ds.image_path(image) == tmp_path / "coco" / split / name
    assert all(a["iscrowd"] == 0 for a in ds.gt["annotations"])
    with pytest.raises(FileNotFoundError, match=r"100 of 100 images are missing"):
        ds.check_images(ds.images())
    monkeypatch.setenv("FASTSAM_DATA", str(tmp_path))
    assert get_dataset("lvis_v1_val").annotation == tmp_path / "lvis" / "lvis_v1_val.json"
    monkeypatch.delenv("FASTSAM_DATA")
    with pytest.raises(ValueError, match="FASTSAM_DATA"):
        get_dataset("coco_2017_val")
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        get_dataset("coco_2017_val", root=tmp_path)
    with pytest.raises(KeyError, match="unknown dataset"):
        get_dataset("voc_2012")


def test_real_predictor_factory_on_a_tiny_random_fastsam(shared_data, tmp_path):
    """The product path: build_predictor -> fastsam_train.infer (random yolov8n-seg)."""
    infer = pytest.importorskip("fastsam_train.infer")
    from fastsam_train import ultra

    weights = infer.save_weights(infer.Weights(
        {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26},
        ultra.build_model("n").state_dict(), "random"), tmp_path / "tiny.pt")
    overrides = [*sample_overrides(shared_data, tmp_path / "run"), "max_images=1",
                 f"model.weights={weights}", "model.imgsz=128", "model.max_det=50"]
    cfg = compose_eval(*overrides, "task.iou_types=[bbox]")  # an untrained net's masks may be
    # empty, which the mask evaluation refuses (tested in test_eval_proposals)
    metrics = eval_run.run(cfg)
    assert metrics["images"] == 1 and 0 < metrics["proposals_per_image"] <= 50
    assert (tmp_path / "run" / "predictions.jsonl.gz").is_file()
    assert OmegaConf.select(cfg, "model.conf") == 0.001
