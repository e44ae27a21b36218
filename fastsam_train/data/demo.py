"""Synthetic SA-1B: tars of ``sa_<id>.jpg`` + ``sa_<id>.json`` in the exact released schema.

Images are textured backgrounds with coloured objects; masks are COCO RLE from pycocotools.
The object mix covers what conversion must handle: overlapping objects (occluded masks),
nested whole/part masks, objects with holes (rings) and multi-part objects (two blobs).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from fastsam_train.masks import encode_mask, rle_areas, rle_boxes

KINDS = ("ellipse", "rectangle", "polygon", "ring", "two_part", "nested")


def random_shape(kind: str, rng: np.random.Generator, hw: tuple[int, int],
                 size_range: tuple[float, float] = (0.03, 0.3)) -> np.ndarray:
    """One filled shape (H, W) uint8 {0, 1} of the given kind, at a random place; its half
    size is log-uniform in ``size_range`` times the short image side."""
    h, w = hw
    mask = np.zeros(hw, np.uint8)
    side = min(h, w)
    cx, cy = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
    ax = max(2, int(side * np.exp(rng.uniform(*np.log(size_range)))))
    ay = max(3, int(ax * rng.uniform(0.5, 1.5)))
    if kind in ("ellipse", "nested", "two_part"):
        cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    if kind == "two_part":
        dx = 2 * ax + int(rng.uniform(0.2, 1.0) * ax) + 4
        cv2.ellipse(mask, (cx + dx, cy), (ax // 2 + 2, ay // 2 + 2), 0.0, 0, 360, 1, -1)
    elif kind == "rectangle":
        cv2.rectangle(mask, (cx - ax, cy - ay), (cx + ax, cy + ay), 1, -1)
    elif kind == "polygon":
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9))))
        radii = rng.uniform(0.5, 1.0, angles.size) * ax
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    elif kind == "ring":
        cv2.ellipse(mask, (cx, cy), (ax, ay), 0.0, 0, 360, 1, -1)
        cv2.ellipse(mask, (cx, cy), (max(1, ax // 2), max(1, ay // 2)), 0.0, 0, 360, 0, -1)
    return mask


def synth_image(rng: np.random.Generator, hw: tuple[int, int],
                num_objects: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A BGR image (H, W, 3) and its visible object masks (each (H, W) uint8, non-empty)."""
    h, w = hw
    xx = np.arange(w, dtype=np.float32)[None, :, None]
    base = rng.uniform(40, 200, 3)
    image = base + 30 * np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6, 3))
    image = image + rng.normal(0, 6, (h, w, 3))
    shapes: list[tuple[np.ndarray, bool]] = []  # (mask, is a part of the previous object)
    for _ in range(num_objects):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        mask = random_shape(kind, rng, hw)
        image[mask > 0] = rng.uniform(0, 255, 3)
        shapes.append((mask, False))
        if kind == "nested":  # a part inside the whole: both are annotated, as in SA-1B
            steps = max(1, int(mask.sum() ** 0.5 // 12))
            part = cv2.erode(mask, np.ones((5, 5), np.uint8), iterations=steps)
            if part.sum() > 16:
                image[part > 0] = rng.uniform(0, 255, 3)
                shapes.append((part, True))
    visible = []
    for i, (mask, _) in enumerate(shapes):
        later = [m for m, is_part in shapes[i + 1 :] if not is_part]
        occluder = np.any(later, axis=0) if later else np.zeros_like(mask, bool)
        vis = (mask > 0) & ~occluder
        if vis.sum() >= 16:
            visible.append(vis.astype(np.uint8))
    return np.clip(image, 0, 255).astype(np.uint8), visible


def sa1b_record(image_id: int, hw: tuple[int, int], masks: list[np.ndarray],
                rng: np.random.Generator) -> dict:
    """The SA-1B json for one image: ``{"image": {...}, "annotations": [...]}``."""
    anns = []
    for k, mask in enumerate(masks):
        rle = encode_mask(mask)
        ys, xs = np.nonzero(mask)
        anns.append({
            "id": image_id * 1000 + k,
            "segmentation": {"size": [int(hw[0]), int(hw[1])], "counts": rle["counts"].decode()},
            "bbox": [float(v) for v in rle_boxes([rle])[0]],
            "area": int(rle_areas([rle])[0]),
            "predicted_iou": float(rng.uniform(0.8, 1.0)),
            "stability_score": float(rng.uniform(0.85, 1.0)),
            "crop_box": [0.0, 0.0, float(hw[1]), float(hw[0])],
            "point_coords": [[float(xs.mean()), float(ys.mean())]],
        })
    return {"image": {"image_id": image_id, "width": int(hw[1]), "height": int(hw[0]),
                      "file_name": f"sa_{image_id}.jpg"}, "annotations": anns}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_demo_sa1b(out_dir: Path, num_tars: int = 2, images_per_tar: int = 8,
                   height: int = 480, width: int = 640, objects: tuple[int, int] = (4, 12),
                   seed: int = 0) -> list[Path]:
    """Write ``sa_000000.tar``... into ``out_dir``; returns the tar paths. Deterministic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for t in range(num_tars):
        path = out_dir / f"sa_{t:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(images_per_tar):
                image_id = 1 + t * images_per_tar + i
                image, masks = synth_image(rng, (height, width), int(rng.integers(*objects)))
                ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
                record = sa1b_record(image_id, (height, width), masks, rng)
                _add(tar, f"sa_{image_id}.jpg", jpg.tobytes())
                _add(tar, f"sa_{image_id}.json", json.dumps(record).encode())
        paths.append(path)
    return paths
