"""The label format of our shards (``txt``): ultralytics' YOLO-seg text, written and read here.

One instance per line: ``<class> x1 y1 x2 y2 ...``, the polygon's vertices normalised by the
image width and height. Every mask is class 0 (class-agnostic). The converter writes with
``label_line``; the training stream reads with ``read_label`` (parse + ultralytics' checks);
the render tool draws ``parse_label``'s pixel polygons.
"""

from __future__ import annotations

import numpy as np

COORD_MAX = 1.01  # ultralytics' verify_image_label: boxes may exceed 1 by 1% ...
COORD_MIN = -0.01  # ... and go below 0 by 1% (when no width/height is negative)
NUM_CLASSES = 1  # class-agnostic: every label line is class 0


class LabelError(ValueError):
    """A label ultralytics would refuse; ``reason`` is a short stable key for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def label_line(polygon: np.ndarray, size: tuple[int, int], cls: int = 0) -> str:
    """Pixel polygon (K, 2) of an image of ``size=(h, w)`` -> ``cls x1 y1 ...`` normalised."""
    norm = (polygon / np.array([size[1], size[0]], dtype=np.float32)).reshape(-1)
    return f"{cls} " + " ".join(["%.6f"] * norm.size) % tuple(norm.tolist())


def parse_lines(text: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Label text -> (classes (N,) float32, N polygons (K_i, 2) float32 as written).

    Raises LabelError("malformed_label") for non-numbers, an odd coordinate count or fewer
    than 3 vertices (ultralytics reads lines of <= 6 values as boxes; our shards hold masks).
    """
    classes, polygons = [], []
    for line in text.strip().splitlines():
        values = line.split()
        if not values:
            continue
        if len(values) < 7 or len(values) % 2 == 0:
            raise LabelError("malformed_label", f"{len(values) - 1} coordinates in a line")
        try:
            numbers = np.array(values, dtype=np.float32)
        except ValueError as exc:
            raise LabelError("malformed_label", str(exc)) from exc
        classes.append(numbers[0])
        polygons.append(numbers[1:].reshape(-1, 2))
    return np.array(classes, dtype=np.float32), polygons


def parse_label(text: str, size: tuple[int, int] = (1, 1)) -> list[np.ndarray]:
    """Label text -> polygons (K, 2) in pixels of an image of ``size=(h, w)`` (unchecked)."""
    scale = np.array([size[1], size[0]], dtype=np.float32)
    return [p * scale for p in parse_lines(text)[1]]


def polygon_boxes(polygons: list[np.ndarray]) -> np.ndarray:
    """Polygons (K_i, 2) -> boxes (N, 4) xywh (centre, size), as ultralytics' segments2boxes."""
    boxes = [np.concatenate([(p.min(0) + p.max(0)) / 2, p.max(0) - p.min(0)]) for p in polygons]
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def check_label(classes: np.ndarray, polygons: list[np.ndarray]) -> list[np.ndarray]:
    """ultralytics' ``verify_image_label`` rules for segment labels; returns the polygons with
    exact duplicates removed (first kept, as ultralytics), or raises LabelError.

    Like ultralytics, the rules apply to each polygon's box (xywh from its extremes): every
    value <= 1.01, and >= 0 (or >= -0.01 with non-negative width/height, always true for
    boxes of polygons); NaN/inf fail both. Classes must be integers below ``NUM_CLASSES``.
    A failing label rejects the whole sample (ultralytics drops the image), nothing is clipped.
    """
    if not polygons:
        return polygons
    boxes = polygon_boxes(polygons)
    if not np.isfinite(boxes).all():
        raise LabelError("label_not_finite", "NaN or inf coordinates")
    if boxes.max() > COORD_MAX or boxes.min() < COORD_MIN:
        raise LabelError("label_out_of_range",
                         f"box values in [{boxes.min():.3g}, {boxes.max():.3g}], "
                         f"allowed [{COORD_MIN}, {COORD_MAX}]")
    if not ((classes % 1 == 0) & (classes >= 0) & (classes < NUM_CLASSES)).all():
        raise LabelError("label_bad_class", f"classes {sorted(set(classes.tolist()))}")
    seen, kept = set(), []
    for cls, poly in zip(classes, polygons, strict=True):
        row = cls.tobytes() + poly.tobytes()
        if row not in seen:
            seen.add(row)
            kept.append(poly)
    return kept


def read_label(text: str) -> list[np.ndarray]:
    """Label text -> checked normalised polygons (K, 2); LabelError for what ultralytics
    would refuse (``malformed_label``, ``label_not_finite``, ``label_out_of_range``,
    ``label_bad_class``)."""
    return check_label(*parse_lines(text))
