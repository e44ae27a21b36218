"""SAM (segment-anything 1.0) as an evaluation model: ``python eval/run.py task=... model=sam
model.checkpoint=sam_vit_h_4b8939.pth model.type=vit_h``.

Each task runs SAM the way the SAM paper (Kirillov et al., "Segment Anything", arXiv 2304.02643)
describes for it; the settings live in ``conf/model/sam.yaml`` (``generator.<task kind>``):

* edges (§7.2, App. D.2): a 16 x 16 grid of foreground points, three masks per point (768),
  redundant masks removed by NMS, then the same mask-to-edge protocol as FastSAM
  (``eval.bsds.masks``) on each mask's unthresholded probability map;
* proposals (§7.3, App. D.3): no crops, no filtering by predicted IoU or stability, a 64 x 64
  grid and NMS at 0.9, masks ranked by the mean of predicted IoU and stability score, the first
  1000 kept (``model.max_det``);
* instance segmentation (§7.4): each detector box prompts SAM (``SamPredictor``, one mask per
  box: SAM returns a single mask for a box).

Edges and proposals go through ``SamAutomaticMaskGenerator`` (subclassed only to keep the
probability maps the edge protocol needs); the adapters return what FastSAM's do, so the same
loops and evaluators score both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fastsam_train.infer.postprocess import Segmentation
from fastsam_train.masks import decode_rle, rle_boxes

SAM_TYPES = ("vit_b", "vit_l", "vit_h")
# image encoder (embedding width, blocks) of each registered SAM
ENCODERS = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32)}
BOX_BATCH = 64  # box prompts decoded at once


def check_sam_type(kind: str) -> str:
    """``kind`` if it is a SAM type, else ValueError listing the allowed values."""
    if kind not in SAM_TYPES:
        raise ValueError(f"model.type must be one of {', '.join(SAM_TYPES)}; got {kind!r}")
    return kind


def encoder_shape(state: dict) -> tuple[int, int]:
    """(embedding width, number of blocks) of the image encoder in a SAM state dict."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise ValueError(f"not a SAM checkpoint: no {key!r} among its {len(state)} tensors")
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")}
    return int(state[key].shape[0]), max(blocks, default=-1) + 1


def describe(shape: tuple[int, int]) -> str:
    name = next((k for k, v in ENCODERS.items() if v == shape), None)
    return name or f"an unknown SAM (image encoder width {shape[0]}, {shape[1]} blocks)"


def load_sam(kind: str, checkpoint: str | Path, device: str = "cpu") -> torch.nn.Module:
    """segment-anything's ``sam_model_registry[kind]`` with the weights of ``checkpoint`` (read
    with ``weights_only=True``). A checkpoint of another type fails naming both."""
    from segment_anything import sam_model_registry

    check_sam_type(kind)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    found = encoder_shape(state)
    if found != ENCODERS[kind]:
        raise ValueError(f"SAM checkpoint {path} is {describe(found)} but model.type={kind}; "
                         f"set model.type to match the checkpoint")
    sam = sam_model_registry[kind](checkpoint=None)
    sam.load_state_dict(state, strict=True)
    return sam.eval().to(device)


def mask_generator(sam: torch.nn.Module, keep_probs: bool = False, **settings):
    """``SamAutomaticMaskGenerator(sam, **settings)``; with ``keep_probs`` one that also keeps
    each kept mask's probability map (sigmoid of its logits at the image size, float16) in its
    ``MaskData`` as ``probs`` (whole-image runs only: no crops, no small-region clean-up)."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import (
        MaskData,
        batched_mask_to_box,
        calculate_stability_score,
        mask_to_rle_pytorch,
    )

    class ProbabilityMaskGenerator(SamAutomaticMaskGenerator):
        def _process_batch(self, points, im_size, crop_box, orig_size) -> MaskData:
            # the library's batch step, with the probabilities kept beside the masks (its
            # crop-edge filter keeps every mask of a whole-image run, so it is left out)
            coords = self.predictor.transform.apply_coords(points, im_size)
            coords = torch.as_tensor(coords, device=self.predictor.device)
            labels = torch.ones(len(coords), dtype=torch.int, device=coords.device)
            logits, iou_preds, _ = self.predictor.predict_torch(
                coords[:, None, :], labels[:, None], multimask_output=True, return_logits=True)
            data = MaskData(masks=logits.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                            points=torch.as_tensor(points.repeat(logits.shape[1], axis=0)))
            if self.pred_iou_thresh > 0:
                data.filter(data["iou_preds"] > self.pred_iou_thresh)
            threshold = self.predictor.model.mask_threshold
            data["stability_score"] = calculate_stability_score(
                data["masks"], threshold, self.stability_score_offset)
            if self.stability_score_thresh > 0:
                data.filter(data["stability_score"] >= self.stability_score_thresh)
            data["probs"] = data["masks"].sigmoid().half()
            data["masks"] = data["masks"] > threshold
            data["boxes"] = batched_mask_to_box(data["masks"])
            data["rles"] = mask_to_rle_pytorch(data["masks"])
            del data["masks"]
            return data

    if not keep_probs:
        return SamAutomaticMaskGenerator(sam, **settings)
    if settings.get("crop_n_layers", 0) or settings.get("min_mask_region_area", 0):
        raise ValueError("probability maps are kept for whole-image runs only "
                         "(crop_n_layers 0, min_mask_region_area 0)")
    return ProbabilityMaskGenerator(sam, **settings)


class SamEverything:
    """SAM's automatic mask generator as the evaluation loop's predictor (``predict``) and as
    an everything-mode model (``everything``, like ``fastsam_train.infer.Predictor``).

    Masks are ranked by the mean of predicted IoU and stability score (the SAM paper's proposal
    ranking), the first ``max_det`` kept (None: all); boxes are the masks' tight boxes.
    """

    def __init__(self, sam: torch.nn.Module, generator: dict, max_det: int | None = None,
                 name: str = "sam") -> None:
        self.sam, self.settings, self.max_det, self.name = sam, dict(generator), max_det, name

    @torch.inference_mode()
    def everything(self, images: Sequence[np.ndarray], probs: bool = False,
                   rle: bool = False) -> list[Segmentation]:
        """RGB uint8 (H, W, 3) images -> one ``Segmentation`` each (``probs``: float (n, H, W)
        probability maps; ``rle``: COCO RLEs instead of dense masks)."""
        from segment_anything.utils.amg import coco_encode_rle

        generator = mask_generator(self.sam, probs, output_mode="coco_rle", **self.settings)
        out = []
        for image in images:
            # generate() without its record formatting: the MaskData keeps the probabilities
            # (pinned segment-anything==1.0; the test checks the masks and scores against it)
            data = generator._generate_masks(np.ascontiguousarray(image))
            rles = [coco_encode_rle(r) for r in data["rles"]]
            score = (np.asarray(data["iou_preds"], np.float64)
                     + np.asarray(data["stability_score"], np.float64)) / 2
            order = np.argsort(-score, kind="stable")[:self.max_det]
            rles = [rles[i] for i in order]
            seg = Segmentation(torch.as_tensor(mask_boxes(rles, image.shape[:2])),
                               torch.as_tensor(score[order]), image.shape[:2],
                               rles=rles if rle else None, extra={"model": "sam"})
            if not rle:
                seg.masks = decode_rle(rles, image.shape[:2])
            if probs:
                seg.probs = torch.as_tensor(np.asarray(data["probs"])[order]).float() \
                    if len(order) else torch.zeros((0, *image.shape[:2]))
            out.append(seg)
        return out

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        segs = self.everything(images, rle=True)
        return [{"rles": s.rles, "boxes": s.boxes, "scores": s.scores} for s in segs]


def mask_boxes(rles: list[dict], hw: tuple[int, int]) -> np.ndarray:
    """Tight xyxy boxes (x2, y2 exclusive) of COCO RLEs: (n, 4) float64."""
    if not rles:
        return np.zeros((0, 4))
    boxes = rle_boxes(rles)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


class SamBoxPrompts:
    """SAM prompted with each detector box of an image (the SAM paper's instance segmentation):
    one mask per detection, in the order of ``detections[image id]`` (``eval.instance.
    load_detections``: by descending score), with the detection's score. The loop passes the
    image records (``needs_records``)."""

    needs_records = True

    def __init__(self, sam: torch.nn.Module, detections: dict[int, list[dict]]) -> None:
        from segment_anything import SamPredictor

        self.predictor, self.detections = SamPredictor(sam), detections

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray], records: list[dict]) -> list[dict]:
        out = []
        for image, record in zip(images, records, strict=True):
            dets = self.detections.get(record["id"], [])
            h, w = image.shape[:2]
            if not dets:
                out.append({"masks": np.zeros((0, h, w), bool), "boxes": np.zeros((0, 4)),
                            "scores": np.zeros(0)})
                continue
            xywh = torch.tensor([d["bbox"] for d in dets], dtype=torch.float32)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
            self.predictor.set_image(np.ascontiguousarray(image))
            masks = []
            for part in boxes.split(BOX_BATCH):
                prompt = self.predictor.transform.apply_boxes_torch(part, (h, w))
                m, _, _ = self.predictor.predict_torch(
                    None, None, boxes=prompt.to(self.predictor.device), multimask_output=False)
                masks.append(m[:, 0].cpu())
            self.predictor.reset_image()
            out.append({"masks": torch.cat(masks), "boxes": boxes.clamp(min=0),
                        "scores": np.array([d["score"] for d in dets])})
        return out
