"""Draw a converted sample (its YOLO-seg polygons over the image) for a person to check."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from fastsam_train.data.labels import parse_label


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated BGR colours (golden-ratio hues)."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(g * 255), int(r * 255)))
    return colours


def draw_polygons(image: np.ndarray, polygons: list[np.ndarray], alpha: float = 0.45,
                  thickness: int = 2) -> np.ndarray:
    """Overlay filled (alpha) and outlined polygons on a BGR image (H, W, 3); returns a copy."""
    fill, out = image.copy(), image.copy()
    colours = palette(len(polygons))
    for poly, colour in zip(polygons, colours, strict=True):
        cv2.fillPoly(fill, [np.round(poly).astype(np.int32)], colour)
    cv2.addWeighted(fill, alpha, out, 1 - alpha, 0, dst=out)
    for poly, colour in zip(polygons, colours, strict=True):
        cv2.polylines(out, [np.round(poly).astype(np.int32)], True, colour, thickness)
    return out


def render_sample(sample: dict[str, bytes]) -> np.ndarray:
    """A webdataset sample (``jpg``, ``txt``) -> side-by-side BGR image: input | overlay."""
    image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    polygons = parse_label(sample["txt"].decode(), image.shape[:2])
    overlay = draw_polygons(image, polygons)
    label = f"{sample['__key__']}: {len(polygons)} masks"
    cv2.putText(overlay, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return np.concatenate([image, overlay], axis=1)
