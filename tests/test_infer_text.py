"""Text prompts: masked crops, batched CLIP scoring, selection (tiny offline CLIP + a stub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsam_train.infer import Predictor, PromptError, Segmentation
from fastsam_train.infer.text import Clip, masked_crops, official_crops, score_masks

TINY_CLIP = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711]},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scene() -> tuple[np.ndarray, torch.Tensor]:
    """A 60 x 80 RGB image with a red square and a green one, and their masks (plus a speck)."""
    image = np.full((60, 80, 3), 128, np.uint8)
    masks = torch.zeros(3, 60, 80, dtype=torch.bool)
    image[5:25, 5:35] = (230, 20, 20)
    masks[0, 5:25, 5:35] = True
    image[30:55, 40:75] = (20, 230, 20)
    masks[1, 30:55, 40:75] = True
    masks[2, 0:3, 0:3] = True  # 9 pixels: below the 100-pixel floor, never scored
    return image, masks


class ColourModel(torch.nn.Module):
    """Stand-in CLIP: an image's feature is its mean RGB (after undoing the normalisation), a
    text's feature is the colour it names. Counts forward passes."""

    def __init__(self):
        super().__init__()
        self.image_calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return x.mean((2, 3)) - x.mean((1, 2, 3))[:, None]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


def colour_clip() -> Clip:
    names = {"red": [1.0, -0.5, -0.5], "green": [-0.5, 1.0, -0.5]}
    tokenizer = lambda texts: torch.tensor(  # noqa: E731
        [next(v for k, v in names.items() if k in t) for t in texts])
    return Clip(ColourModel(), tokenizer, (16, 16), torch.zeros(3, 1, 1), torch.ones(3, 1, 1),
                torch.device("cpu"))


def test_masked_crops_keep_only_the_object_in_a_square():
    image, masks = scene()
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    crops = masked_crops(rgb, masks[:2], (16, 16))
    assert crops.shape == (2, 3, 16, 16)
    # the 30 x 20 red box sits in a 30 x 30 square: black bands above and below
    assert crops[0, :, 0].max() == 0 and crops[0, :, -1].max() == 0
    assert crops[0, 0, 8, 8] == pytest.approx(230 / 255, abs=1e-3)
    assert crops[1, 1, 8, 8] == pytest.approx(230 / 255, abs=1e-3)


def test_official_crops_are_the_box_region_unmasked_on_white():
    """FastSAM's crop: the image inside the mask's tight box (also pixels the mask leaves out),
    white elsewhere, through CLIP's resize + centre crop."""
    image, masks = scene()
    mask = torch.zeros(1, 60, 80, dtype=torch.bool)
    mask[0, 5:25, 5:20] = True  # the left half of the red square ...
    mask[0, 50, 70] = True  # ... and one pixel whose box takes in grey background
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    crop = official_crops(rgb, mask, colour_clip())[0]
    assert crop.shape == (3, 16, 16)
    grey, red, white = 128 / 255, torch.tensor([230, 20, 20]) / 255, torch.ones(3)
    green = torch.tensor([20, 230, 20]) / 255
    # 60 x 80 -> 16 x 21, centre crop 16: the red square is crop columns 0-6, the mask's part
    # of it columns 0-2; the grey row band 7-12 is inside the box, the green square beside it
    assert torch.allclose(crop[:, 3, 5], red, atol=0.05)  # outside the mask, inside the box
    assert torch.allclose(crop[:, 9, 3], torch.full((3,), grey), atol=0.02)  # background
    assert torch.allclose(crop[:, 10, 12], green, atol=0.05)  # another object in the box
    assert torch.allclose(crop[:, 15, 5], white, atol=0.02)  # outside the box
    assert not (crop.amax(0) < 0.1).any()  # nothing black: nothing is masked out
    assert masked_crops(rgb, mask, (16, 16)).amin(0).eq(0).any()  # the masked crop is on black


def test_text_selects_the_named_object_in_one_batched_pass():
    image, masks = scene()
    seg = Segmentation(torch.zeros(3, 4), torch.tensor([0.9, 0.8, 0.7]), (60, 80), masks=masks)
    clip = colour_clip()
    predictor = Predictor(lambda x: None)
    out = predictor.text(seg, image, ["a green thing", "a red thing"], clip, mode="cosine")
    assert torch.equal(out.masks, masks[[1, 0]])
    masked = predictor.text(seg, image, ["a green thing", "a red thing"], clip, crop="masked")
    assert torch.equal(masked.masks, masks[[1, 0]])
    with pytest.raises(ValueError, match="official, masked"):
        predictor.text(seg, image, "red", clip, crop="square")
    assert clip.model.image_calls == 2  # both crops in one forward pass, per call
    scores = out.extra["text_scores"]
    assert scores.shape == (2, 3) and scores[0, 2] == float("-inf")
    soft = predictor.text(seg, image, "red", clip).extra["text_scores"]
    assert soft[0, :2].sum().item() == pytest.approx(1.0) and soft[0, 2] == 0
    with pytest.raises(PromptError):
        predictor.text(seg, image, [""], clip)
    tiny = Segmentation(torch.zeros(1, 4), torch.ones(1), (60, 80), masks=masks[2:])
    assert len(predictor.text(tiny, image, "red", clip)) == 0


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    return folder


def test_tiny_open_clip_loads_once_and_batches_like_one_by_one(tiny_clip_dir):
    pytest.importorskip("open_clip")
    from fastsam_train.infer.text import load_clip

    torch.manual_seed(0)
    clip = load_clip(f"local-dir:{tiny_clip_dir}", None)
    assert load_clip(f"local-dir:{tiny_clip_dir}", None) is clip  # cached
    image, masks = scene()
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    batched = score_masks(clip, rgb, masks, ["a dog", "a cat"], mode="cosine", batch=64)
    single = score_masks(clip, rgb, masks, ["a dog", "a cat"], mode="cosine", batch=1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert batched.shape == (2, 3) and torch.isfinite(batched[:, :2]).all()


def test_cli_text_prompt_with_tiny_clip(tiny_clip_dir, tmp_path, monkeypatch):
    """``fastsam predict --text`` end to end with the tiny CLIP; the network is replaced by a
    predictor that returns the scene's masks (real networks are covered elsewhere)."""
    pytest.importorskip("open_clip")
    import cv2

    import fastsam_train.cli as cli

    image, masks = scene()
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), image[..., ::-1])

    class SceneMasks(Predictor):
        def everything(self, images, probs=False, rle=False):
            return [Segmentation(torch.zeros(3, 4), torch.ones(3), (60, 80), masks=masks)]

    monkeypatch.setattr(cli, "_predictor", lambda args: SceneMasks(lambda x: None))
    assert cli.main(["predict", str(path), "--text", "a red square", "--clip-model",
                     f"local-dir:{tiny_clip_dir}", "--clip-pretrained", "", "--out",
                     str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert [a["prompt"] for a in doc["annotations"]] == ["text: a red square"]
