"""One SA-1B image + json -> one webdataset sample (``jpg``, ``txt`` YOLO-seg label, ``json``).

Every mask becomes class 0 (class-agnostic), one polygon per line, coordinates normalised by
the output width/height (ultralytics' segment format). ``json`` keeps, line by line, the
instance metadata: box (xywh, output pixels), area (output pixels), predicted_iou,
stability_score and the SA-1B annotation id.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from fastsam_train.data.labels import label_line
from fastsam_train.data.polygons import MULTIPART_MODES, rle_to_polygon
from fastsam_train.data.sa1b import RawPair, parse_meta
from fastsam_train.images import ImageReadError
from fastsam_train.images import decode_image as decode_untrusted
from fastsam_train.masks import RLETotalError

log = logging.getLogger(__name__)
# annotation drop reasons that mean broken input (logged per image), not a configured filter
MALFORMED = ("bad_annotation", "bad_rle", "rle_total_mismatch", "bad_area", "bad_bbox",
             "bad_score")


@dataclass(frozen=True)
class RecordOptions:
    """Per-image conversion settings (all come from ``conf/convert.yaml``)."""

    max_side: int = 1024  # long side of the output image; smaller images are not upscaled
    jpeg_quality: int = 90
    min_area: float = 0.0  # source pixels
    min_predicted_iou: float = 0.0
    min_stability_score: float = 0.0
    multipart: str = "merge"
    min_part_area: float = 4.0  # output pixels
    epsilon: float = 0.5  # Douglas-Peucker tolerance, output pixels
    max_pixels: int = 50_000_000  # larger source images are skipped before decoding

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_side < 32:
            raise ValueError(f"max_side must be >= 32, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.multipart not in MULTIPART_MODES:
            raise ValueError(f"multipart must be one of {MULTIPART_MODES}: {self.multipart!r}")


class SkipImage(Exception):
    """The image cannot be used; ``reason`` is a short stable key counted in the manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def output_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most ``max_side``, aspect ratio kept."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_image(raw: bytes, max_pixels: int, name: str = "image",
                 orientation: bool = True) -> np.ndarray:
    """Image bytes -> BGR uint8 (H, W, 3) via ``fastsam_train.images`` (pixel limit before
    decoding, corrupt data an error); SkipImage('corrupt_image' / 'too_many_pixels' /
    'not_an_image') otherwise. ``orientation=False``: stored pixel order (COCO-format
    annotations are in it)."""
    try:
        return decode_untrusted(raw, max_pixels, name=name, color="bgr", corrupt="error",
                                orientation=orientation)
    except ImageReadError as exc:
        raise SkipImage(exc.reason, str(exc)) from exc


def resize_encode(image: np.ndarray, size: tuple[int, int], quality: int) -> bytes:
    """Resize (INTER_AREA) to ``size=(h, w)`` and JPEG-encode."""
    if image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SkipImage("encode_failed")
    return buf.tobytes()


def _number(value) -> bool:
    """A finite JSON number (bool is not one)."""
    return type(value) in (int, float) and math.isfinite(value)


def malformed_reason(ann: object) -> str | None:
    """Why one SA-1B annotation is malformed (a reason of ``MALFORMED``), or None.

    SA-1B's schema, all always present: ``id`` (an integer), ``segmentation``
    {size: [h, w], counts: str}, ``area``, ``bbox`` (4 numbers, xywh), ``predicted_iou`` and
    ``stability_score`` (numbers).
    """
    if not isinstance(ann, dict):
        return "bad_annotation"
    ident = ann.get("id")
    if not (type(ident) is int or (isinstance(ident, str) and len(ident) <= 64)):
        return "bad_annotation"
    seg = ann.get("segmentation")
    if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str | list):
        return "bad_rle"
    size = seg.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(type(v) is int for v in size):
        return "bad_rle"
    if not _number(ann.get("area")):
        return "bad_area"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_number, bbox))
            and min(bbox[2:]) >= 0):
        return "bad_bbox"
    if not all(_number(ann.get(k)) for k in ("predicted_iou", "stability_score")):
        return "bad_score"
    return None


def annotation_skip(ann: object, hw: tuple[int, int], opts: RecordOptions) -> str | None:
    """Reason to drop one annotation before decoding its mask, or None to keep it."""
    bad = malformed_reason(ann)
    if bad is not None:
        return bad
    if ann["segmentation"]["size"] != list(hw):
        return "rle_size_mismatch"
    area = ann["area"]
    if area <= 0:
        return "zero_area"
    if area < opts.min_area:
        return "below_min_area"
    if ann["predicted_iou"] < opts.min_predicted_iou:
        return "below_predicted_iou"
    if ann["stability_score"] < opts.min_stability_score:
        return "below_stability_score"
    return None


def instance_meta(ann: dict, scale: tuple[float, float]) -> dict:
    x, y, w, h = ann["bbox"]
    sx, sy = scale
    return {"id": ann["id"], "bbox": [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2),
                                          round(h * sy, 2)],
            "area": round(float(ann["area"]) * sx * sy, 2),
            "predicted_iou": ann["predicted_iou"], "stability_score": ann["stability_score"]}


def convert_record(pair: RawPair, opts: RecordOptions, drops: Counter) -> dict[str, bytes | str]:
    """Convert one image; per-annotation drops are counted into ``drops`` by reason.

    Raises SkipImage (missing_image, missing_json, bad_json, corrupt_image, too_many_pixels,
    not_an_image, image_size_mismatch, no_annotations, no_valid_annotations) when the image is
    unusable. Anything else that goes wrong on one image's data is a SkipImage too
    (``conversion_error``, logged with its traceback), so one odd image never ends a run.
    """
    try:
        return _convert_record(pair, opts, drops)
    except SkipImage:
        raise
    except Exception as exc:  # noqa: BLE001 - a backstop: count and log, never end the run
        log.exception("%s: unexpected error converting the image", pair.stem)
        raise SkipImage("conversion_error", f"{type(exc).__name__}: {exc}") from exc


def _convert_record(pair: RawPair, opts: RecordOptions, drops: Counter
                    ) -> dict[str, bytes | str]:
    if pair.image is None:
        raise SkipImage("missing_image", "json without its jpg")
    if pair.meta is None:
        raise SkipImage("missing_json", "jpg without its json")
    try:
        meta = parse_meta(pair.meta)
    except ValueError as exc:
        raise SkipImage("bad_json", str(exc)) from exc
    image = decode_image(pair.image, opts.max_pixels, pair.stem)
    hw = image.shape[:2]
    if (meta["image"]["height"], meta["image"]["width"]) != hw:
        raise SkipImage("image_size_mismatch", f"json says {meta['image']['height']}x"
                        f"{meta['image']['width']}, jpg is {hw[0]}x{hw[1]}")
    if not meta["annotations"]:
        raise SkipImage("no_annotations")
    size = output_size(*hw, opts.max_side)
    scale = (size[1] / hw[1], size[0] / hw[0])
    lines, instances, malformed = [], [], Counter()
    for ann in meta["annotations"]:
        reason = annotation_skip(ann, hw, opts)
        polygon = None
        if reason is None:
            try:
                polygon = rle_to_polygon(ann["segmentation"], size, opts.multipart,
                                         opts.min_part_area, opts.epsilon)
            except RLETotalError:
                reason = "rle_total_mismatch"
            except (ValueError, TypeError, IndexError, OverflowError):  # undecodable counts
                reason = "bad_rle"
            else:
                reason = None if polygon is not None else "empty_polygon"
        if reason is not None:
            drops[reason] += 1
            if reason in MALFORMED:
                malformed[reason] += 1
            continue
        lines.append(label_line(polygon, size))
        instances.append(instance_meta(ann, scale))
    if malformed:
        log.warning("%s: dropped malformed annotations %s", pair.stem, dict(malformed))
    if not lines:
        raise SkipImage("no_valid_annotations", f"all {len(meta['annotations'])} dropped")
    info = {"image_id": meta["image"]["image_id"], "file_name": meta["image"].get("file_name"),
            "orig_size": list(hw), "size": list(size), "instances": instances}
    return {"__key__": pair.stem, "jpg": resize_encode(image, size, opts.jpeg_quality),
            "txt": ("\n".join(lines) + "\n").encode(), "json": json.dumps(info).encode()}
