"""SAM as the evaluation model (``model=sam``): checkpoint / type checks, and a small randomly
initialised SAM (segment-anything's own modules, tiny dimensions) through every task on the
shared COCO sample and BSDS500 images, with the same loops, evaluators and reports as FastSAM."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_eval

import eval.run as eval_run

pytest.importorskip("segment_anything")
TINY = (32, 2)  # image encoder width, blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_sam(checkpoint=None):
    """A SAM of segment-anything's modules at 64 px input, width 32, two blocks (random)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    width, depth = TINY
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=width, img_size=64, mlp_ratio=2, num_heads=2, patch_size=16,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=(1,), window_size=2, out_chans=32),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(4, 4),
                                     input_image_size=(64, 64), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=32,
                                                               mlp_dim=64, num_heads=2),
                                 iou_head_depth=2, iou_head_hidden_dim=16),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


@pytest.fixture
def tiny_vit_b(tmp_path, monkeypatch) -> Path:
    """``model.type=vit_b`` builds the tiny SAM (registry and encoder shape patched), and its
    state dict is saved as a checkpoint: the product's loading path runs unchanged."""
    import segment_anything

    import eval.sam as sam_module

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", tiny_sam)
    monkeypatch.setitem(sam_module.ENCODERS, "vit_b", TINY)
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def test_sam_type_and_checkpoint_mismatch_fail_naming_both(tmp_path, shared_data):
    from eval.sam import describe, encoder_shape, load_sam

    vit_h_like = {"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16),
                  **{f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(32)}}
    torch.save(vit_h_like, tmp_path / "h.pth")
    assert encoder_shape(vit_h_like) == (1280, 32) and describe((1280, 32)) == "vit_h"
    with pytest.raises(ValueError, match=r"is vit_h but model.type=vit_b"):
        load_sam("vit_b", tmp_path / "h.pth")
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(96, 3, 16, 16)},
               tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="unknown SAM .image encoder width 96, 0 blocks. but "
                                         "model.type=vit_l"):
        load_sam("vit_l", tmp_path / "odd.pth")
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        load_sam("vit_b", tmp_path / "missing.pth")
    # at config time, before any data is read
    sample = shared_data / "coco_sample"
    cfg = compose_eval("task=coco_ar", "model=sam", "model.type=vit_x",
                       f"model.checkpoint={tmp_path / 'h.pth'}", "task.annotation=/nonexistent",
                       f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(ValueError, match="model.type must be one of vit_b, vit_l, vit_h; got "
                                         "'vit_x'"):
        eval_run.run(cfg)
    cfg = compose_eval("task=coco_ar", "model.mask_protocol=nearest", "model.weights=w.pt",
                       f"task.annotation={sample / 'panoptic_coco_detection_format.json'}",
                       f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(ValueError, match="mask_protocol must be one of official, exact"):
        eval_run.run(cfg)


def test_tiny_sam_proposals_and_instance_on_the_coco_sample(tiny_vit_b, shared_data, tmp_path):
    from eval.datasets import load_gt

    sample = shared_data / "coco_sample"
    common = [f"task.annotation={sample / 'panoptic_coco_detection_format.json'}",
              f"task.image_root={sample / 'input_images'}", "progress=false", "model=sam",
              "model.type=vit_b", f"model.checkpoint={tiny_vit_b}", "model.max_det=40",
              "model.generator.proposals.points_per_side=8"]
    out = tmp_path / "ar"
    metrics = eval_run.run(compose_eval("task=coco_ar", f"paths.output_dir={out}", *common))
    assert metrics["images"] == 2 and 0 < metrics["proposals_per_image"] <= 40
    assert 0 <= metrics["mask/ar_1000"] <= 1
    report = (out / "report.md").read_text()
    assert "Model: SAM (vit_b)" in report and "SAM's own (segment-anything 1.0)" in report
    # instance: one decoded mask per detector box, in detection order (box prompts)
    gt = load_gt(sample / "panoptic_coco_detection_format.json")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.9 - 0.01 * k} for k, a in enumerate(gt["annotations"])
            if not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "inst"
    metrics = eval_run.run(compose_eval("task=coco_instance", f"paths.output_dir={out}",
                                        f"task.detections={tmp_path / 'dets.json'}", *common))
    assert metrics["mask/boxes"] == len(dets) and metrics["mask/boxes_without_mask"] == 0
    assert 0 <= metrics["mask/ap"] <= 1 and "mask_proposals/ap" not in metrics
    assert "| **SAM (ours, box prompts)** |" in (out / "report.md").read_text()


def test_sam_everything_ranks_by_iou_and_stability_and_keeps_probabilities(tiny_vit_b,
                                                                             shared_data):
    import cv2

    from eval.sam import SamEverything, load_sam

    image = cv2.imread(str(sorted((shared_data / "bsds500" / "images" / "test").glob("*.jpg"))[0]))
    image = np.ascontiguousarray(image[..., ::-1])
    sam = load_sam("vit_b", tiny_vit_b)
    model = SamEverything(sam, {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                "stability_score_thresh": 0.0, "box_nms_thresh": 0.7,
                                "crop_n_layers": 0})
    seg, = model.everything([image], probs=True)
    assert 0 < len(seg) <= 48 and seg.probs.shape == seg.masks.shape == (len(seg), *image.shape[:2])
    # masks are logits > 0; the maps are float16 sigmoids (0.5 + tiny rounds to 0.5)
    assert (seg.probs[seg.masks] >= 0.5).all() and not (seg.probs[~seg.masks] > 0.5).any()
    assert (seg.scores[:-1] >= seg.scores[1:]).all()
    records = __import__("segment_anything").SamAutomaticMaskGenerator(
        sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=0.7, output_mode="coco_rle").generate(image)
    expected = sorted(((r["predicted_iou"] + r["stability_score"]) / 2 for r in records),
                      reverse=True)
    np.testing.assert_allclose(seg.scores.numpy(), expected, rtol=1e-6)


def test_sam_config_holds_the_sam_paper_settings():
    cfg = compose_eval("task=bsds_edges", "model=sam", "model.checkpoint=x.pth")
    gen = cfg.model.generator
    assert (gen.edges.points_per_side, gen.edges.pred_iou_thresh) == (16, 0.0)
    assert (gen.proposals.points_per_side, gen.proposals.box_nms_thresh) == (64, 0.9)
    assert gen.proposals.stability_score_thresh == 0 and gen.proposals.crop_n_layers == 0
    assert cfg.task.headline == "sam/ods" and cfg.model.max_det == 300  # (unused for edges)
    assert compose_eval("task=coco_ar", "model=sam").model.max_det == 1000


def test_tiny_sam_edges_on_shared_bsds_images(tiny_vit_b, shared_data, tmp_path):
    bsds = shared_data / "bsds500"
    out = tmp_path / "edges"
    metrics = eval_run.run(compose_eval(
        "task=bsds_edges", f"task.image_dir={bsds / 'images' / 'test'}",
        f"task.gt_dir={bsds / 'groundTruth' / 'test'}", "max_images=2", "task.workers=1",
        "task.nthresh=9", "model.generator.edges.points_per_side=8",  # 16 (the protocol): 40 s
        "task.methods=[model]", "model=sam", "model.type=vit_b",
        f"model.checkpoint={tiny_vit_b}", f"paths.output_dir={out}", "progress=false"))
    assert metrics["images"] == 2 and 0 <= metrics["sam/ods"] <= 1
    assert len(list((out / "edges" / "sam").glob("*.png"))) == 2
    assert "| **SAM (ours)** |" in (out / "report.md").read_text()
