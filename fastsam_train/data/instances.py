"""Image + instance masks -> one webdataset sample, for the inputs that are not SA-1B (COCO-format
json, BSDS500). The image handling, the mask -> polygon code and the label format are SA-1B's
(``records.py``, ``polygons.py``): every mask arrives as a COCO RLE at the source resolution, only
its box is decoded and area-resampled onto the output grid, holes are kept (keyhole bridges) and
multi-part masks are joined or reduced by ``record.multipart``.

``json`` of a sample: ``image_id``, ``file_name``, ``orig_size``, ``size`` and per instance
(line by line with ``txt``) ``id``, ``bbox`` (xywh, output pixels), ``area`` (output pixels) and
the input's own fields (``category_id``, ``iscrowd``, ``annotator``, ...).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fastsam_train.data.labels import label_line
from fastsam_train.data.polygons import rle_to_polygon
from fastsam_train.data.records import RecordOptions, SkipImage, output_size, resize_encode
from fastsam_train.masks import rle_areas, rle_boxes


@dataclass
class Instance:
    """One object: ``rle`` (compressed COCO RLE, ``counts`` bytes, ``size`` [h, w] of the
    source image), label class ``cls`` and extra ``meta`` for the sample's json."""

    rle: dict
    cls: int = 0
    meta: dict = field(default_factory=dict)


def build_sample(key: str, image: np.ndarray, instances: list[Instance], opts: RecordOptions,
                 drops: Counter, info: dict) -> dict[str, bytes | str]:
    """The sample (``__key__``, ``jpg``, ``txt``, ``json``) of ``image`` (BGR (H, W, 3)) and its
    ``instances``; ``info`` goes into the json (``image_id``, ``file_name``, ...).

    Per-instance drops are counted into ``drops``: ``zero_area``, ``below_min_area``
    (``opts.min_area`` source pixels), ``empty_polygon`` (nothing survives ``min_part_area``).
    Raises ``SkipImage("no_annotations" | "no_valid_annotations")``.
    """
    if not instances:
        raise SkipImage("no_annotations")
    hw = image.shape[:2]
    size = output_size(*hw, opts.max_side)
    scale = (size[1] / hw[1], size[0] / hw[0])
    lines, metas = [], []
    for inst in instances:
        area = float(rle_areas([inst.rle])[0])
        reason = "zero_area" if area <= 0 else "below_min_area" if area < opts.min_area else None
        polygon = None if reason else rle_to_polygon(inst.rle, size, opts.multipart,
                                                     opts.min_part_area, opts.epsilon)
        if reason is None and polygon is None:
            reason = "empty_polygon"
        if reason is not None:
            drops[reason] += 1
            continue
        x, y, w, h = rle_boxes([inst.rle])[0].tolist()
        sx, sy = scale
        lines.append(label_line(polygon, size, inst.cls))
        metas.append({**inst.meta, "bbox": [round(x * sx, 2), round(y * sy, 2),
                                            round(w * sx, 2), round(h * sy, 2)],
                      "area": round(area * sx * sy, 2)})
    if not lines:
        raise SkipImage("no_valid_annotations", f"all {len(instances)} dropped")
    meta = {**info, "orig_size": list(hw), "size": list(size), "instances": metas}
    return {"__key__": key, "jpg": resize_encode(image, size, opts.jpeg_quality),
            "txt": ("\n".join(lines) + "\n").encode(), "json": json.dumps(meta).encode()}
