"""BSDS500 edge task: SAM's mask-to-edge protocol against an independent scipy reference, perfect
masks scoring near-perfect edges, the ``task=bsds_edges`` run end to end (tiny random FastSAM,
Sobel, Canny) on a generated dataset in the real BSDS layout (.mat ``groundTruth`` cells),
consistency with the PNG benchmark, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import MAX_DIST, compose_eval
from scipy import ndimage
from scipy.io import savemat

import eval.run as eval_run
from eval.bsds import benchmark_dir, evaluate_image, load_ground_truth, summarize
from eval.bsds.masks import edges_from_masks, mask_edge_map, normalize, outer_boundary
from eval.datasets import bsds_records
from eval.edges import PAPER


# --- a generated BSDS dataset in the real layout ---------------------------------------------
def scene(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """int32 (h, w) segmentation: background 0 and a few rectangles / disks (labels 1..)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.int32)
    for k in range(1, 5):
        x, y = int(rng.integers(5, w - 40)), int(rng.integers(5, h - 35))
        if k % 2:
            labels[y:y + int(rng.integers(15, 30)), x:x + int(rng.integers(15, 35))] = k
        else:
            cv2.circle(labels, (x + 15, y + 15), int(rng.integers(8, 15)), k, -1)
    return labels


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Thin boundaries: pixels whose right or lower neighbour has another label."""
    b = np.zeros(labels.shape, bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


def write_gt(path: Path, annotators: list[np.ndarray]) -> None:
    cells = np.empty((1, len(annotators)), dtype=object)
    for k, seg in enumerate(annotators):
        cells[0, k] = {"Segmentation": seg.astype(np.uint16) + 1,
                       "Boundaries": boundaries(seg).astype(np.uint8)}
    savemat(str(path), {"groundTruth": cells})


def make_bsds(root: Path, n: int = 3) -> tuple[Path, Path]:
    images, gts = root / "images" / "test", root / "groundTruth" / "test"
    images.mkdir(parents=True)
    gts.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        labels = scene(i)
        palette = rng.integers(0, 255, (labels.max() + 1, 3))
        image = palette[labels].astype(np.float64) + rng.normal(0, 4, (*labels.shape, 3))
        cv2.imwrite(str(images / f"{1000 + i}.jpg"), image.clip(0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        shifted = np.roll(labels, 1, axis=1)  # a second annotator, one pixel off
        write_gt(gts / f"{1000 + i}.mat", [labels, shifted])
    return images, gts


@pytest.fixture(scope="module")
def bsds(tmp_path_factory) -> tuple[Path, Path]:
    return make_bsds(tmp_path_factory.mktemp("bsds"))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    infer = pytest.importorskip("fastsam_train.infer")
    from fastsam_train import ultra

    return infer.save_weights(infer.Weights(
        {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26},
        ultra.build_model("n").state_dict(), "random"), tmp_path_factory.mktemp("w") / "n.pt")


# --- the protocol against an independent reference -------------------------------------------
def reference_edge_map(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Full-frame scipy version of the protocol: Sobel (replicated border) magnitude of each map
    on the 1-px band either side of the hole-filled mask's contour; max over masks."""
    out = np.zeros(masks.shape[1:])
    for p, m in zip(probs.astype(np.float64), masks, strict=True):
        grad = np.hypot(ndimage.sobel(p, axis=1, mode="nearest"),
                        ndimage.sobel(p, axis=0, mode="nearest"))
        filled = ndimage.binary_fill_holes(m)
        band = ndimage.binary_dilation(filled) & ~ndimage.binary_erosion(filled, border_value=1)
        out = np.maximum(out, np.where(band, grad, 0))
    return out


def test_mask_edge_map_matches_a_full_frame_scipy_reference():
    h, w = 60, 80
    masks = np.zeros((4, h, w), bool)
    masks[0, 10:40, 10:50] = True
    masks[0, 20:30, 20:30] = False            # a hole: its rim is not an outer boundary
    cv2.circle(masks[1].view(np.uint8), (55, 35), 15, 1, -1)   # overlaps mask 0
    masks[2, 40:, 60:] = True                 # touches the image border (no edge there)
    masks[3, 2:5, 70:75] = True
    rng = np.random.default_rng(0)
    probs = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.5) for m in masks])
    probs = np.clip(probs + rng.uniform(0, 0.05, probs.shape), 0, 1).astype(np.float32)
    got = mask_edge_map(probs, masks)
    np.testing.assert_allclose(got, reference_edge_map(probs, masks), rtol=1e-5, atol=1e-5)
    hole_rim = np.zeros((h, w), bool)
    hole_rim[21:29, 21:29] = True             # well inside the hole: no edge even though the
    assert got[hole_rim].max() == 0           # probability map has a gradient there
    assert got[h - 1, 70] == 0 and got[50, w - 1] == 0   # image border of mask 2
    assert got[40, 70] > 0                    # its real (top) boundary
    assert mask_edge_map(probs[:0], masks[:0]).shape == (h, w)
    with pytest.raises(ValueError, match="must both be"):
        mask_edge_map(probs[:, :10], masks)


def test_outer_boundary_is_two_pixels_wide_around_a_rectangle():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    band = outer_boundary(m)
    assert band.sum() == 4 * 10 - 4 + 4 * 10  # inner ring (36) + outer ring without corners
    assert not band[7:13, 7:13].any() and not band[0:3].any()


def test_perfect_masks_give_near_perfect_edges_and_noise_does_not():
    labels = scene(3)
    masks = np.stack([labels == k for k in range(1, labels.max() + 1)])
    probs = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.0) for m in masks])
    edges = edges_from_masks(probs, masks)
    assert edges.shape == labels.shape and 0 <= edges.min() and edges.max() <= 1
    gt = [boundaries(labels)]
    # object-vs-background boundaries only (the masks do not include the background)
    good = summarize([evaluate_image(edges, gt, nthresh=19, max_dist=MAX_DIST)])
    assert good.ods > 0.9
    noise = summarize([evaluate_image(np.random.default_rng(0).random(labels.shape), gt,
                                      nthresh=19, max_dist=MAX_DIST)])
    assert noise.ods < 0.5
    np.testing.assert_array_equal(normalize(np.full((3, 3), 2.0)), np.zeros((3, 3)))
    np.testing.assert_allclose(normalize(np.array([1.0, 3.0])), [0, 1])


# --- the task end to end -----------------------------------------------------------------------
def edge_overrides(bsds, out: Path, *extra: str) -> list[str]:
    images, gts = bsds
    return ["task=bsds_edges", f"task.image_dir={images}", f"task.gt_dir={gts}",
            f"paths.output_dir={out}", "progress=false", *extra]


def test_bsds_edges_task_end_to_end(bsds, tiny_weights, tmp_path):
    out = tmp_path / "run"
    cfg = compose_eval(*edge_overrides(bsds, out, f"model.weights={tiny_weights}",
                                       "model.imgsz=128", "model.conf=0.001", "task.workers=2",
                                       "logger=wandb"))
    metrics = eval_run.run(cfg)
    assert metrics["images"] == 3
    for method in ("fastsam", "sobel", "canny"):
        for key in ("ods", "ois", "ap", "r50"):
            assert f"{method}/{key}" in metrics
        assert 0 <= metrics[f"{method}/ods"] <= 1
        for iid in ("1000", "1001", "1002"):
            png = cv2.imread(str(out / "edges" / method / f"{iid}.png"), cv2.IMREAD_UNCHANGED)
            assert png.shape == (96, 128) and png.dtype == np.uint8
        assert (out / "bsr" / method / "eval_bdry.txt").is_file()
        assert (out / "bsr" / method / "1000_ev1.txt").is_file()
    # clean synthetic images: the classical detectors find the region boundaries
    assert metrics["sobel/ods"] > 0.8 and metrics["canny/ods"] > 0.8
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["sobel"]["sobel/ods"] == pytest.approx(metrics["sobel/ods"])
    assert saved["paper"]["FastSAM"]["ods"] == PAPER["FastSAM"][0] == 0.750
    report = (out / "report.md").read_text()
    assert "| FastSAM (paper) | 0.750 | 0.790 | 0.793 | cut in text |" in report
    assert "| Sobel filter (paper) | 0.539 | — | cut in text | cut in text |" in report
    assert "Model: FastSAM" in report and "mask protocol: **official**" in report
    assert f"| **Sobel (ours)** | {metrics['sobel/ods']:.3f} |" in report
    assert cv2.imread(str(out / "pr_curve.png")) is not None
    assert any(out.glob("wandb/offline-run-*/files/media/images/bsds_edges/pr_curve*.png"))


def test_streamed_scores_equal_the_png_benchmark(bsds, tmp_path):
    """The in-stream evaluator scores exactly what benchmark_dir reads back from the PNGs."""
    out = tmp_path / "run"
    metrics = eval_run.run(compose_eval(*edge_overrides(
        bsds, out, "task.methods=[sobel]", "task.workers=1", "task.nthresh=25")))
    again = benchmark_dir(out / "edges" / "sobel", bsds[1], nthresh=25, max_dist=MAX_DIST,
                          workers=1,
                          progress=False)
    for key in ("ods", "ois", "ap", "r50"):
        assert metrics[f"sobel/{key}"] == pytest.approx(getattr(again, key), abs=1e-12)


def test_task_config_model_options_and_cli_precedence():
    cfg = compose_eval("task=bsds_edges", "paths.output_dir=/tmp/unused")
    assert cfg.task.kind == "edges" and cfg.model.conf == 0.4 and cfg.model.max_det == 300
    assert cfg.task.headline == "fastsam/ods" and cfg.model.mask_protocol == "official"
    assert compose_eval("task=bsds_edges", "model.conf=0.2").model.conf == 0.2
    assert compose_eval("task=coco_ar").model.conf == 0.001   # other tasks unchanged


def test_bad_input_names_the_file(bsds, tmp_path):
    images, gts = make_bsds(tmp_path / "d", n=2)
    (gts / "1001.mat").unlink()
    with pytest.raises(FileNotFoundError, match="1001.mat"):
        bsds_records(images, gts)
    (images / "1001.jpg").unlink()
    (images / "1000.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="1000.jpg"):
        eval_run.run(compose_eval(*edge_overrides((images, gts), tmp_path / "r",
                                                  "task.methods=[sobel]", "task.workers=1")))
    write_gt(gts / "1000.mat", [np.zeros((10, 10), np.int32)])   # wrong size ground truth
    cv2.imwrite(str(images / "1000.jpg"), np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="1000.mat"):
        eval_run.run(compose_eval(*edge_overrides((images, gts), tmp_path / "r2",
                                                  "task.methods=[sobel]", "task.workers=1")))
    with pytest.raises(ValueError, match="task.methods must name model"):
        eval_run.run(compose_eval(*edge_overrides(bsds, tmp_path / "r3", "task.methods=[hed]")))
    with pytest.raises(FileNotFoundError, match="BSDS folder"):
        bsds_records(tmp_path / "nope", gts)
    assert len(load_ground_truth(gts / "1000.mat")) == 1


def test_bsds_splits_are_registered_under_the_data_root(tmp_path, monkeypatch):
    from eval.datasets import bsds_folders

    images, gts = bsds_folders("bsds500_test", tmp_path)
    assert images == tmp_path / "BSR/BSDS500/data/images/test"
    assert gts == tmp_path / "BSR/BSDS500/data/groundTruth/test"
    monkeypatch.setenv("FASTSAM_DATA", str(tmp_path / "env"))
    assert bsds_folders("bsds500_val")[1] == tmp_path / "env/BSR/BSDS500/data/groundTruth/val"
    assert bsds_folders("bsds500_test", None, "a", "b") == (Path("a"), Path("b"))
    with pytest.raises(KeyError, match="bsds500_test"):
        bsds_folders("bsds300")
    make_bsds(tmp_path / "BSR" / "BSDS500" / "data", n=1)   # the standard layout, found by name
    metrics = eval_run.run(compose_eval("task=bsds_edges", f"paths.data_dir={tmp_path}",
                                        f"paths.output_dir={tmp_path / 'out'}", "progress=false",
                                        "task.methods=[sobel]", "task.workers=1"))
    assert metrics["images"] == 1
