"""One SA-1B image + json -> one webdataset sample (``jpg``, ``txt`` YOLO-seg label, ``json``).

Every mask becomes class 0 (class-agnostic), one polygon per line, coordinates normalised by
the output width/height (ultralytics' segment format). ``json`` keeps, line by line, the
instance metadata: box (xywh, output pixels), area (output pixels), predicted_iou,
stability_score and the SA-1B annotation id.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from fastsam_train.data.polygons import MULTIPART_MODES, rle_to_polygon
from fastsam_train.data.sa1b import RawPair, parse_meta


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

    def __post_init__(self) -> None:
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


def decode_image(raw: bytes) -> np.ndarray:
    """JPEG bytes -> BGR uint8 (H, W, 3); SkipImage('corrupt_image') if truncated/undecodable."""
    if not raw.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        raise SkipImage("corrupt_image", "no JPEG end-of-image marker (truncated?)")
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SkipImage("corrupt_image", "OpenCV could not decode the JPEG")
    return image


def resize_encode(image: np.ndarray, size: tuple[int, int], quality: int) -> bytes:
    """Resize (INTER_AREA) to ``size=(h, w)`` and JPEG-encode."""
    if image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SkipImage("encode_failed")
    return buf.tobytes()


def annotation_skip(ann: dict, hw: tuple[int, int], opts: RecordOptions) -> str | None:
    """Reason to drop one annotation before decoding its mask, or None to keep it."""
    seg = ann.get("segmentation")
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        return "bad_rle"
    if list(seg["size"]) != list(hw):
        return "rle_size_mismatch"
    area = ann.get("area", 0)
    if not area or area <= 0:
        return "zero_area"
    if area < opts.min_area:
        return "below_min_area"
    if ann.get("predicted_iou", 1.0) < opts.min_predicted_iou:
        return "below_predicted_iou"
    if ann.get("stability_score", 1.0) < opts.min_stability_score:
        return "below_stability_score"
    return None


def label_line(polygon: np.ndarray, size: tuple[int, int], cls: int = 0) -> str:
    """``cls x1 y1 ...`` with coordinates normalised by (w, h) of ``size=(h, w)``."""
    norm = (polygon / np.array([size[1], size[0]], dtype=np.float32)).reshape(-1)
    return f"{cls} " + " ".join(["%.6f"] * norm.size) % tuple(norm.tolist())


def instance_meta(ann: dict, scale: tuple[float, float]) -> dict:
    x, y, w, h = ann.get("bbox", [0, 0, 0, 0])
    sx, sy = scale
    return {"id": ann.get("id"), "bbox": [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2),
                                          round(h * sy, 2)],
            "area": round(float(ann["area"]) * sx * sy, 2),
            "predicted_iou": ann.get("predicted_iou"),
            "stability_score": ann.get("stability_score")}


def convert_record(pair: RawPair, opts: RecordOptions, drops: Counter) -> dict[str, bytes | str]:
    """Convert one image; per-annotation drops are counted into ``drops`` by reason.

    Raises SkipImage (missing_image, missing_json, bad_json, corrupt_image,
    image_size_mismatch, no_annotations, no_valid_annotations) when the image is unusable.
    """
    if pair.image is None:
        raise SkipImage("missing_image", "json without its jpg")
    if pair.meta is None:
        raise SkipImage("missing_json", "jpg without its json")
    try:
        meta = parse_meta(pair.meta)
    except ValueError as exc:
        raise SkipImage("bad_json", str(exc)) from exc
    image = decode_image(pair.image)
    hw = image.shape[:2]
    if (meta["image"]["height"], meta["image"]["width"]) != hw:
        raise SkipImage("image_size_mismatch", f"json says {meta['image']['height']}x"
                        f"{meta['image']['width']}, jpg is {hw[0]}x{hw[1]}")
    if not meta["annotations"]:
        raise SkipImage("no_annotations")
    size = output_size(*hw, opts.max_side)
    scale = (size[1] / hw[1], size[0] / hw[0])
    lines, instances = [], []
    for ann in meta["annotations"]:
        reason = annotation_skip(ann, hw, opts)
        polygon = None
        if reason is None:
            try:
                polygon = rle_to_polygon(ann["segmentation"], size, opts.multipart,
                                         opts.min_part_area, opts.epsilon)
            except (ValueError, TypeError, IndexError):  # undecodable counts string
                reason = "bad_rle"
            else:
                reason = None if polygon is not None else "empty_polygon"
        if reason is not None:
            drops[reason] += 1
            continue
        lines.append(label_line(polygon, size))
        instances.append(instance_meta(ann, scale))
    if not lines:
        raise SkipImage("no_valid_annotations", f"all {len(meta['annotations'])} dropped")
    info = {"image_id": meta["image"]["image_id"], "file_name": meta["image"].get("file_name"),
            "orig_size": list(hw), "size": list(size), "instances": instances}
    return {"__key__": pair.stem, "jpg": resize_encode(image, size, opts.jpeg_quality),
            "txt": ("\n".join(lines) + "\n").encode(), "json": json.dumps(info).encode()}
