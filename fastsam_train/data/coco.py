"""A COCO-format instances json (COCO, LVIS, annotation-tool exports) as a conversion input.

Segmentations: polygons (a list of rings ``[x1, y1, x2, y2, ...]`` in source pixels; several
rings = one multi-polygon object), compressed RLE (``counts`` a string) and uncompressed RLE
(``counts`` a list of run lengths, as COCO stores crowd regions). Every form becomes a
compressed RLE through pycocotools (``frPyObjects``: the rasterisation COCO's own tools use)
and then goes through SA-1B's polygon code (``instances.build_sample``), so multi-polygon
objects, holes and the label format are handled exactly as for SA-1B.

Decisions:

* ``crowd=skip`` (default) drops ``iscrowd=1`` regions (a crowd is a group of objects, which
  COCO's evaluation ignores); ``keep`` trains on them as one object each.
* Class-agnostic by default (every object class 0, as FastSAM). ``categories=true`` writes the
  label class ``i`` = the i-th kept category by ascending id, and the manifest's
  ``categories`` maps ``class -> {id, name}``. ``category_filter`` (ids or names) keeps only
  some categories; a filter that matches none of the json's categories is an error.
* Images are found under ``image_root``: by ``file_name``, or for LVIS (whose images are COCO
  2017's) by ``coco_url`` as ``<image_root>/<split>/<name>``. A path that would leave
  ``image_root`` is refused (counted skip ``bad_file_name``).
* Counted, never fatal: annotations whose ``image_id`` is not in ``images`` (manifest
  ``annotation_drops.image_not_in_images``) or whose category is not in ``categories``
  (``unknown_category``), segmentations of unknown type
  (``unknown_segmentation``), polygon rings with fewer than 3 points (``ring_under_3_points``;
  the object is dropped as ``no_valid_polygon`` when no ring is left), RLEs whose size is not the
  image's (``rle_size_mismatch``) or whose counts do not decode to it (``bad_rle``); missing or
  undecodable images, images whose size differs from the json (``image_size_mismatch``).

Sources are chunks of ``chunk`` images by ascending id, named ``<name>-<i>``; keys are
``<name>_<image id>``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastsam_train.data.inputs import Item
from fastsam_train.data.instances import Instance, build_sample
from fastsam_train.data.records import RecordOptions, SkipImage, decode_image
from fastsam_train.data.sa1b import Source
from fastsam_train.masks import compress_rle, polygons_to_rle, rle_is_valid

LOCATE = ("auto", "file_name", "coco_url")
CROWD = ("skip", "keep")
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # webdataset keys end at the first dot


@dataclass(frozen=True)
class CocoImage:
    """One image record of the json and its annotations (payload of an ``Item``)."""

    record: dict
    annotations: list


def load_coco(path: str | Path) -> dict:
    """Read a COCO-format json; ValueError naming the file unless it has ``images``,
    ``annotations`` and ``categories`` lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO-format instances file (no {key!r} list)")
    return data


def kept_categories(categories: list[dict], selection: list | None, path: Path) -> list[dict]:
    """Categories to keep, by ascending id. ``selection``: ids (int) or names (str); None = all.
    A selection that matches nothing raises ValueError naming ``path``."""
    cats = sorted(categories, key=lambda c: c["id"])
    if selection is None:
        return cats
    wanted = {str(s) for s in selection}
    kept = [c for c in cats if str(c["id"]) in wanted or c.get("name") in wanted]
    if not kept:
        raise ValueError(f"{path}: category_filter {list(selection)} matches none of its "
                         f"{len(cats)} categories (e.g. {[c.get('name') for c in cats[:5]]})")
    return kept


def image_path(root: Path, image: dict, locate: str) -> Path | None:
    """Where an image record's file is under ``root``, or None if the record's name would
    leave ``root`` (absolute, ``..``) or is missing. ``coco_url``: ``<root>/<split>/<name>``."""
    if locate == "coco_url":
        url = image.get("coco_url")
        parts = str(url).rstrip("/").split("/")[-2:] if isinstance(url, str) else []
    else:
        name = image.get("file_name")
        parts = list(PurePosixPath(name).parts) if isinstance(name, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p for p in parts) or \
            PurePosixPath(*parts).is_absolute():
        return None
    return root.joinpath(*parts)


def ring_list(segmentation: list, drops: Counter) -> list[list[float]] | None:
    """Valid polygon rings (even length, >= 3 points, finite numbers) of a polygon
    segmentation; short rings are counted and left out. None if a ring is malformed."""
    rings = []
    for ring in segmentation:
        if not isinstance(ring, list) or len(ring) % 2 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in ring):
            return None
        if len(ring) < 6:
            drops["ring_under_3_points"] += 1
            continue
        rings.append([float(v) for v in ring])
    return rings


def to_rle(segmentation, hw: tuple[int, int], drops: Counter) -> tuple[dict | None, str | None]:
    """(compressed RLE with ``counts`` bytes, None) or (None, drop reason) for one object."""
    h, w = hw
    if isinstance(segmentation, list):
        rings = ring_list(segmentation, drops)
        if rings is None:
            return None, "bad_polygon"
        if not rings:
            return None, "no_valid_polygon"
        return polygons_to_rle(rings, h, w), None
    if not isinstance(segmentation, dict) or "counts" not in segmentation \
            or "size" not in segmentation:
        return None, "unknown_segmentation"
    if list(segmentation["size"]) != [h, w]:
        return None, "rle_size_mismatch"
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed: validate, then compress as pycocotools does
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) \
                or sum(counts) != h * w:
            return None, "bad_rle"
        return compress_rle(segmentation, h, w), None
    if not isinstance(counts, str | bytes):
        return None, "unknown_segmentation"
    rle = {"size": [h, w], "counts": counts.encode("ascii", "replace")
           if isinstance(counts, str) else counts}
    return (rle, None) if rle_is_valid(rle, hw) else (None, "bad_rle")


class CocoInput:
    """A COCO-format instances json with its images (see the module doc).

    Args:
        annotation: the json. image_root: folder the images are under.
        locate: ``auto`` (``coco_url`` for LVIS jsons, whose categories have ``frequency``,
            else ``file_name``), ``file_name`` or ``coco_url``.
        name: key / source prefix (default: the json's file stem, other characters than
            letters, digits, ``_`` and ``-`` replaced by ``_``).
        crowd: ``skip`` | ``keep``. categories: keep class ids (True) or class-agnostic.
        category_filter: ids or names of the categories to keep (None: all).
        chunk: images per source.
    """

    kind = "coco"

    def __init__(self, annotation: str, image_root: str, locate: str = "auto",
                 name: str | None = None, crowd: str = "skip", categories: bool = False,
                 category_filter: list | None = None, chunk: int = 1000):
        if locate not in LOCATE:
            raise ValueError(f"input.locate must be one of {LOCATE}, got {locate!r}")
        if crowd not in CROWD:
            raise ValueError(f"input.crowd must be one of {CROWD}, got {crowd!r}")
        self.path, self.root = Path(annotation).expanduser(), Path(image_root).expanduser()
        self.name = name or re.sub(r"[^A-Za-z0-9_-]", "_", self.path.stem)
        if not SAFE_ID.match(self.name):
            raise ValueError(f"input.name {self.name!r} may hold only letters, digits, _ and -")
        if not self.root.is_dir():
            raise FileNotFoundError(f"image root not found: {self.root}")
        self.locate, self.crowd, self.keep_classes = locate, crowd, bool(categories)
        self.category_filter = None if category_filter is None else list(category_filter)
        self.chunk = chunk
        self._index = None

    def settings(self) -> dict:
        return {"type": self.kind, "name": self.name, "locate": self.locate,
                "crowd": self.crowd, "categories": self.keep_classes,
                "category_filter": self.category_filter}

    def index(self) -> dict:
        """Parsed once (workers are forked after it): images and annotations by image key."""
        if self._index is None:
            self._index = self._build_index(load_coco(self.path))
        return self._index

    def _build_index(self, data: dict) -> dict:
        cats = kept_categories(data["categories"], self.category_filter, self.path)
        classes = {c["id"]: i for i, c in enumerate(cats)}
        locate = self.locate
        if locate == "auto":
            lvis = any("frequency" in c for c in data["categories"])
            locate = "coco_url" if lvis else "file_name"
        images: dict[str, dict] = {}
        for image in data["images"]:
            key = str(image.get("id"))
            if key in images:
                raise ValueError(f"{self.path}: image id {key} appears twice in 'images'")
            images[key] = image
        known = {c.get("id") for c in data["categories"]}
        anns, drops = defaultdict(list), Counter()
        for ann in data["annotations"]:
            key = str(ann.get("image_id")) if isinstance(ann, dict) else None
            if key not in images:
                drops["image_not_in_images"] += 1
            elif ann.get("category_id") not in known:
                drops["unknown_category"] += 1
            elif ann["category_id"] not in classes:
                drops["category_filtered"] += 1
            else:
                anns[key].append(ann)
        numeric = all(isinstance(im.get("id"), int) for im in images.values())
        order = sorted(images, key=lambda k: (int(k), k) if numeric else (0, k))
        return {"images": images, "annotations": anns, "order": order, "classes": classes,
                "categories": cats, "locate": locate, "drops": drops}

    def sources(self) -> list[Source]:
        order = self.index()["order"]
        if not order:
            raise ValueError(f"{self.path}: no images")
        return [Source(name=f"{self.name}-{i // self.chunk:05d}", path=self.path,
                       stems=tuple(order[i:i + self.chunk]))
                for i in range(0, len(order), self.chunk)]

    def items(self, source: Source, errors: list[tuple[str, str]]) -> Iterator[Item]:
        index = self.index()
        for image_key in source.stems:
            key = f"{self.name}_{image_key}"
            yield Item(key, key, CocoImage(index["images"][image_key],
                                           index["annotations"].get(image_key, [])))

    def to_sample(self, item: Item, opts: RecordOptions, drops: Counter) -> dict:
        record, anns = item.payload.record, item.payload.annotations
        if not SAFE_ID.match(str(record.get("id"))):
            raise SkipImage("bad_image_id", f"image id {record.get('id')!r} is not a plain name")
        path = image_path(self.root, record, self.index()["locate"])
        if path is None:
            raise SkipImage("bad_file_name", f"image {record.get('id')}: file name / coco_url "
                            "would leave the image root")
        if not path.is_file():
            raise SkipImage("missing_image", str(path))
        image = decode_image(path.read_bytes(), opts.max_pixels, str(path), orientation=False)
        hw = image.shape[:2]
        if (record.get("height"), record.get("width")) != hw:
            raise SkipImage("image_size_mismatch", f"{path} is {hw[0]}x{hw[1]}, the json says "
                            f"{record.get('height')}x{record.get('width')}")
        instances = []
        for ann in anns:
            if ann.get("iscrowd") and self.crowd == "skip":
                drops["crowd"] += 1
                continue
            rle, reason = to_rle(ann.get("segmentation"), hw, drops)
            if reason is not None:
                drops[reason] += 1
                continue
            cls = self.index()["classes"][ann["category_id"]] if self.keep_classes else 0
            instances.append(Instance(rle, cls, {"id": ann.get("id"),
                                                 "category_id": ann.get("category_id"),
                                                 "iscrowd": int(bool(ann.get("iscrowd")))}))
        info = {"image_id": record.get("id"), "file_name": path.name}
        return build_sample(item.key, image, instances, opts, drops, info)

    def summary(self) -> dict:
        index = self.index()
        out = {"annotation_drops": dict(index["drops"])}
        if self.keep_classes:
            out["categories"] = {str(i): {"id": c["id"], "name": c.get("name")}
                                 for i, c in enumerate(index["categories"])}
        return out
