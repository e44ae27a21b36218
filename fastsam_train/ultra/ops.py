"""Network output -> ultralytics' NMS + prototype masks (what its validator does)."""

from __future__ import annotations

import torch
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import process_mask


def segment_predictions(
    raw: torch.Tensor, proto: torch.Tensor, shape: tuple[int, int], conf: float, iou: float,
    max_det: int,
) -> list[dict[str, torch.Tensor]]:
    """Eval-mode model output -> per image ``boxes`` (n, 4) xyxy pixels, ``scores`` (n,),
    ``coefficients`` (n, 32) and ``masks`` uint8 (n, H/4, W/4) at prototype resolution.

    raw: (B, 4 + nc + 32, A) first element of the eval output; proto: (B, 32, H/4, W/4);
    shape: network input (H, W). Class-agnostic NMS (ultralytics' ``non_max_suppression``) and
    ``process_mask`` (coefficients x prototypes, sigmoid > 0.5, cropped to the box).
    """
    outputs = non_max_suppression(raw, conf, iou, agnostic=True, max_det=max_det, nc=1)
    results = []
    for i, det in enumerate(outputs):
        masks = process_mask(proto[i], det[:, 6:], det[:, :4], tuple(shape), upsample=False)
        results.append({"boxes": det[:, :4], "scores": det[:, 4], "coefficients": det[:, 6:],
                        "masks": masks})
    return results
