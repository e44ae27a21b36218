"""Text prompts: CLIP (open_clip) scores a crop of every mask against the text.

Two crops: ``official`` (FastSAM's ``_crop_image``: the mask's bounding-box region of the
image, unmasked, pasted on a white canvas of the image's size, then CLIP's own preprocessing:
resize of the short side + centre crop) and ``masked`` (the object alone on black in a square
around it, resized in torch). The model is loaded once per (name, weights, device) and cached;
crops are encoded in batches: one forward pass per ``batch`` crops, never one per mask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastsam_train.infer.prompts import mask_areas, masks_to_boxes, square_boxes, text_scores


@dataclass
class Clip:
    """An open_clip model with its tokenizer and input normalisation."""

    model: torch.nn.Module
    tokenizer: object
    size: tuple[int, int]
    mean: torch.Tensor  # (3, 1, 1)
    std: torch.Tensor
    device: torch.device
    resize: Callable | None = None  # PIL image -> float (3, *size) in [0, 1]: the model's own
    # preprocessing without its normalisation (None: open_clip's default, shortest side bicubic)

    def pil_resize(self) -> Callable:
        """CLIP's preprocessing up to (not including) normalisation, for PIL images."""
        if self.resize is None:
            from open_clip.transform import image_transform

            self.resize = image_transform(self.size, is_train=False, mean=(0.0,) * 3,
                                          std=(1.0,) * 3, resize_mode="shortest",
                                          interpolation="bicubic")
        return self.resize

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """t texts -> (t, d) features."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """float (k, 3, S, S) RGB in [0, 1] -> (k, d) features, ``batch`` images per pass."""
        out = [self.model.encode_image((chunk.to(self.device) - self.mean) / self.std).float()
               for chunk in images.split(batch)]
        return torch.cat(out) if out else torch.zeros((0, 0))


@functools.lru_cache(maxsize=4)
def load_clip(model: str = "ViT-B-32", pretrained: str | None = "openai",
              device: str = "cpu") -> Clip:
    """open_clip model ``model`` with weights ``pretrained``: a tag (downloaded by open_clip on
    first use, e.g. ``openai``), a local weights file, or None (random init). ``model`` may be
    ``local-dir:/folder`` holding ``open_clip_config.json`` and optionally the weights, which
    needs no network at all. Cached: the same arguments return the same object."""
    import open_clip  # optional dependency, imported only for text prompts
    from open_clip.transform import PreprocessCfg, image_transform_v2

    net = open_clip.create_model(model, pretrained=pretrained or None, device=device,
                                 pretrained_text=False)
    net.eval()
    cfg = net.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], tuple | list) else (cfg["size"],) * 2
    # the model's preprocessing with identity normalisation: encode_images normalises
    resize = image_transform_v2(PreprocessCfg(**{**cfg, "mean": (0.0,) * 3, "std": (1.0,) * 3}),
                                is_train=False)
    return Clip(net, open_clip.get_tokenizer(model), tuple(size),
                torch.tensor(cfg["mean"], device=device).view(3, 1, 1),
                torch.tensor(cfg["std"], device=device).view(3, 1, 1), torch.device(device),
                resize)


CROPS = ("official", "masked")


def official_crops(image: torch.Tensor, masks: torch.Tensor, clip: Clip) -> torch.Tensor:
    """FastSAM's crops: per mask, a white canvas of the image's size holding the image inside
    the mask's tight box (unmasked), through CLIP's preprocessing (``Clip.pil_resize``).
    image uint8 (3, H, W) RGB; masks bool (n, H, W) -> float (n, 3, *clip.size) in [0, 1]."""
    from PIL import Image

    rgb = image.permute(1, 2, 0).cpu().numpy()
    resize = clip.pil_resize()
    out = []
    for x1, y1, x2, y2 in masks_to_boxes(masks.cpu()).long().tolist():
        canvas = np.full_like(rgb, 255)
        canvas[y1:y2, x1:x2] = rgb[y1:y2, x1:x2]
        out.append(resize(Image.fromarray(canvas)))
    return torch.stack(out) if out else torch.zeros((0, 3, *clip.size))


def masked_crops(image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each mask's object alone on black, in a square around it, resized to ``size``.

    image uint8 (3, H, W) RGB; masks bool (n, H, W) -> float (n, 3, *size) in [0, 1]. The square
    (centred on the mask's tight box, side = its longer side) keeps the object's aspect ratio.
    """
    h, w = image.shape[1:]
    squares = square_boxes(masks_to_boxes(masks)).round().long().tolist()
    out = torch.zeros((len(masks), 3, *size))
    for k, (x1, y1, x2, y2) in enumerate(squares):
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        crop = image[:, cy1:cy2, cx1:cx2].float() / 255 * masks[k, cy1:cy2, cx1:cx2]
        crop = F.pad(crop, (cx1 - x1, x2 - cx2, cy1 - y1, y2 - cy2))
        out[k] = F.interpolate(crop[None], size=size, mode="bilinear", antialias=True,
                               align_corners=False)[0]
    return out.clamp_(0, 1)


def score_masks(clip: Clip, image: torch.Tensor, masks: torch.Tensor, texts: list[str],
                mode: str = "softmax", min_area: int = 100, batch: int = 64,
                areas: torch.Tensor | None = None, crop: str = "official") -> torch.Tensor:
    """(t, n) score of each text for each mask (``prompts.text_scores``) on its ``crop``
    (``official_crops`` or ``masked_crops``). Masks of at most ``min_area`` pixels (``areas``
    (n,), counted if not given) are not scored, as in the official code: score 0 (softmax) or
    -inf (cosine)."""
    if crop not in CROPS:
        raise ValueError(f"text crop must be one of {', '.join(CROPS)}; got {crop!r}")
    areas = mask_areas(masks) if areas is None else areas
    keep = (areas > min_area).nonzero().flatten()
    fill = 0.0 if mode == "softmax" else float("-inf")
    scores = torch.full((len(texts), len(masks)), fill)
    if len(keep):
        crops = official_crops(image, masks[keep], clip) if crop == "official" else \
            masked_crops(image, masks[keep], clip.size)
        features = clip.encode_images(crops, batch)
        scores[:, keep] = text_scores(features, clip.encode_texts(texts), mode).cpu()
    return scores
