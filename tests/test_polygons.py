"""RLE decoding and RLE -> polygon conversion on masks of known geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastsam_train.data.polygons import (
    mask_crop_at_scale,
    mask_iou,
    mask_to_polygon,
    polygon_to_mask,
    resize_mask,
    rle_to_polygon,
)
from fastsam_train.masks import decode_rle_crop


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def random_masks(seed: int, hw=(300, 420), n=25):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        mask = (rng.random(hw) < 0.002).astype(np.uint8)  # scattered pixels: many tiny runs
        cx, cy = int(rng.integers(0, hw[1])), int(rng.integers(0, hw[0]))
        axes = (int(rng.integers(1, 150)), int(rng.integers(1, 150)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        yield mask


def full_from_crop(crop, x0, y0, hw):
    full = np.zeros(hw, np.uint8)
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


@pytest.mark.parametrize("seed", [0, 1])
def test_crop_decoder_matches_pycocotools(seed):
    for mask in random_masks(seed):
        crop, x0, y0 = decode_rle_crop(rle_of(mask))
        np.testing.assert_array_equal(full_from_crop(crop, x0, y0, mask.shape),
                                      mask_utils.decode(rle_of(mask)))


def test_crop_decoder_edge_cases():
    hw = (50, 60)
    empty = np.zeros(hw, np.uint8)
    assert decode_rle_crop(rle_of(empty)) is None
    cases = [np.ones(hw, np.uint8), np.zeros(hw, np.uint8), np.zeros(hw, np.uint8)]
    cases[1][:, 10:20] = 1  # full columns: runs wrap over column breaks
    cases[1][0:3, 20] = 1
    cases[2][49, 59] = 1  # a single pixel in the last corner
    for mask in cases:
        crop, x0, y0 = decode_rle_crop(rle_of(mask))
        np.testing.assert_array_equal(full_from_crop(crop, x0, y0, hw), mask)


@pytest.mark.parametrize("out_hw", [(137, 191), (300, 420), (61, 85)])
def test_crop_resampling_equals_full_image_inter_area(out_hw):
    for mask in random_masks(3, n=10):
        crop, ox, oy = mask_crop_at_scale(rle_of(mask), (out_hw[1] / 420, out_hw[0] / 300))
        full = np.zeros(out_hw, np.uint8)
        h = min(crop.shape[0], out_hw[0] - oy)
        w = min(crop.shape[1], out_hw[1] - ox)
        full[oy : oy + h, ox : ox + w] = crop[:h, :w]
        assert crop[h:].sum() == 0 and crop[:, w:].sum() == 0
        np.testing.assert_array_equal(full, resize_mask(mask, out_hw))


def test_rectangle_is_exact_with_four_corners():
    mask = np.zeros((100, 120), np.uint8)
    mask[20:50, 30:90] = 1
    poly = rle_to_polygon(rle_of(mask), (100, 120))
    assert len(poly) == 4
    np.testing.assert_allclose(sorted(map(tuple, poly)), [(30, 20), (30, 49), (89, 20), (89, 49)])
    assert mask_iou(polygon_to_mask(poly, (100, 120)), mask) == 1.0


def test_hole_is_kept():
    mask = np.zeros((200, 200), np.uint8)
    cv2.circle(mask, (100, 100), 80, 1, -1)
    cv2.circle(mask, (100, 100), 30, 0, -1)
    raster = polygon_to_mask(rle_to_polygon(rle_of(mask), (200, 200)), (200, 200))
    assert raster[100, 100] == 0 and raster[100, 40] == 1
    assert mask_iou(raster, mask) > 0.97


def two_parts():
    mask = np.zeros((160, 240), np.uint8)
    cv2.circle(mask, (60, 80), 40, 1, -1)
    cv2.circle(mask, (180, 80), 20, 1, -1)
    return mask


def test_multipart_merge_keeps_every_part():
    mask = two_parts()
    raster = polygon_to_mask(rle_to_polygon(rle_of(mask), (80, 120)), (80, 120))
    assert raster[40, 30] == 1 and raster[40, 90] == 1
    assert mask_iou(raster, resize_mask(mask, (80, 120))) > 0.95


def test_multipart_largest_keeps_one_part():
    raster = polygon_to_mask(rle_to_polygon(rle_of(two_parts()), (160, 240),
                                            multipart="largest"), (160, 240))
    assert raster[80, 60] == 1 and raster[80, 180] == 0


def test_fragments_below_min_part_area_are_dropped():
    mask = two_parts()
    mask[5:7, 5:7] = 1  # a 4-pixel speck
    poly = rle_to_polygon(rle_of(mask), (160, 240), min_part_area=10)
    assert polygon_to_mask(poly, (160, 240))[5:7, 5:7].sum() == 0
    assert mask_to_polygon(np.zeros((5, 5), np.uint8)) is None


def test_tiny_mask_still_gives_a_polygon():
    mask = np.zeros((40, 40), np.uint8)
    mask[10, 10] = 1
    poly = rle_to_polygon(rle_of(mask), (40, 40), min_part_area=1)
    assert len(poly) >= 3 and polygon_to_mask(poly, (40, 40))[10, 10] == 1


def test_bad_multipart_mode_raises():
    with pytest.raises(ValueError, match="multipart"):
        mask_to_polygon(two_parts(), multipart="union")
