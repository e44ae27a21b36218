"""Evaluation datasets, registered by name; roots come from one place, never hard-coded.

    ds = get_dataset("coco_2017_val")                 # root: FASTSAM_DATA (conf: paths.data_dir)
    ds = get_dataset("lvis_v1_val", root="/data")
    register_coco_json("my_set", "ann.json", "images/")   # any COCO-format json + image folder
    ds = get_dataset("bsds500_test", annotator="median", min_area=100)   # BSDS regions

Standard layout under the data root (detectron2's, so an existing ``datasets/`` folder works)::

    <root>/coco/annotations/instances_val2017.json
    <root>/coco/val2017/000000000139.jpg ...
    <root>/coco/train2017/...              # LVIS v1 val also uses COCO 2017 train images
    <root>/lvis/lvis_v1_val.json

BSDS500 splits (``bsds500_test`` / ``_val`` / ``_train``) are built from the human segmentations
(``fastsam_train.data.bsds``: BSR layout, ``<root>/bsds500`` or flat): one annotator per image
by the conversion's rule, each region (at least ``min_area`` pixels) one object, as COCO RLE;
with ``boundaries=True`` (the edge task) one record per image and ``.mat`` file instead.

LVIS images are COCO 2017 images: each image's ``coco_url`` (``.../val2017/<name>.jpg`` or
``.../train2017/<name>.jpg``) names the split folder and the file under ``<root>/coco``.
LVIS annotations carry no ``iscrowd``; it is set to 0 here, so every consumer sees COCO fields.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT_ENV = "FASTSAM_DATA"


@dataclass
class EvalDataset:
    """A COCO-format ground truth and where its images are.

    ``gt``: the dataset dict (``images``, ``annotations``, ``categories``); ``kind``: ``coco``
    or ``lvis`` (LVIS categories carry ``frequency`` r/c/f); ``image_root``: the folder that
    ``locate`` resolves image records against.
    """

    name: str
    kind: str
    gt: dict
    annotation: Path
    image_root: Path
    locate: Callable[[Path, dict], Path] = field(repr=False)

    def image_path(self, image: dict) -> Path:
        return self.locate(self.image_root, image)

    def images(self, max_images: int | None = None) -> list[dict]:
        """Image records sorted by id (the first ``max_images`` when given)."""
        records = sorted(self.gt["images"], key=lambda im: im["id"])
        return records[:max_images] if max_images else records

    def check_images(self, images: list[dict]) -> None:
        """Raise FileNotFoundError naming the missing files before any inference runs."""
        missing = [(im["id"], self.image_path(im)) for im in images
                   if not self.image_path(im).is_file()]
        if missing:
            shown = "; ".join(f"id {i}: {p}" for i, p in missing[:3])
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} of {len(images)} images are missing ({shown}"
                f"{'; ...' if len(missing) > 3 else ''}). Images are looked up under "
                f"{self.image_root}; set paths.data_dir / {ROOT_ENV} or task.image_root.")


    def check_annotated(self, images: list[dict]) -> None:
        """Raise ValueError unless some of ``images`` has a non-crowd annotation: recall (or AP)
        over no objects is nan, which must not pass as a result."""
        if not images:
            raise ValueError(f"{self.name} ({self.annotation}): no images to evaluate")
        ids = {im["id"] for im in images}
        if not any(a["image_id"] in ids and not a.get("iscrowd") for a in self.gt["annotations"]):
            raise ValueError(f"{self.name} ({self.annotation}): none of the {len(ids)} images "
                             "evaluated has a (non-crowd) annotation, so recall would be nan")


def by_file_name(root: Path, image: dict) -> Path:
    return root / image["file_name"]


def by_coco_url(root: Path, image: dict) -> Path:
    """``<root>/<split>/<name>`` from ``coco_url`` (LVIS), else ``<root>/<file_name>``."""
    url = image.get("coco_url")
    if not url:
        return root / image["file_name"]
    split, name = url.rstrip("/").split("/")[-2:]
    return root / split / name


def data_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$FASTSAM_DATA``; raises if neither is set."""
    root = root or os.environ.get(ROOT_ENV)
    if not root:
        raise ValueError(f"no data root: pass root= (conf: paths.data_dir) or set {ROOT_ENV}")
    return Path(root)


def load_gt(annotation: str | Path) -> dict:
    """Read and check a COCO/LVIS json; LVIS annotations get ``iscrowd`` 0 (they have none).

    Raises FileNotFoundError, or ValueError naming the file and the first bad record: not
    JSON, no images or no annotations (recall would be nan), or a record that pycocotools /
    lvis could not use (``check_gt``)."""
    path = Path(annotation)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        gt = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not a valid JSON file ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(gt, dict):
        raise ValueError(f"{path}: not a COCO-format annotation file (not a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"{path}: not a COCO-format annotation file (no {key!r} list)")
    problem = check_gt(gt)
    if problem:
        raise ValueError(f"{path}: {problem}")
    for ann in gt["annotations"]:
        ann.setdefault("iscrowd", 0)
    return gt


def _int(value) -> bool:
    """A JSON integer that fits int64 (pycocotools and lvis keep ids in numpy arrays)."""
    return type(value) is int and -(1 << 63) <= value < 1 << 63


def _numbers(values, count: int | None = None) -> bool:
    """A list of finite JSON numbers (of ``count`` items when given)."""
    if not isinstance(values, list) or (count is not None and len(values) != count):
        return False
    try:  # fsum (C) rejects anything that is not a number; a NaN or inf makes the sum one
        return math.isfinite(math.fsum(values))
    except (TypeError, ValueError, OverflowError):
        return False


def _bad_segmentation(seg, image: dict) -> str | None:
    if isinstance(seg, list):
        if all(_numbers(poly) and len(poly) % 2 == 0 for poly in seg):
            return None
        return "segmentation polygons must be lists of x, y numbers"
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if size != [image["height"], image["width"]]:
            return f"RLE size {size!r:.40} is not the image's [height, width]"
        if isinstance(counts, str) or (isinstance(counts, list) and all(map(_int, counts))):
            return None
        return "RLE counts must be a string or a list of integers"
    return "segmentation must be polygons or an RLE"


def check_gt(gt: dict) -> str | None:
    """The first problem of a COCO-format dict (lists ``images``, ``annotations``,
    ``categories``) that pycocotools / lvis would trip over or that makes recall meaningless,
    or None. Checked: images with unique integer ids and positive integer height / width;
    categories with unique integer ids; annotations with an image and category that exist, a
    box of 4 finite numbers with w, h >= 0, a finite area >= 0, iscrowd 0/1 and a
    segmentation (polygons or an RLE of the image's size) when present; at least one image and
    one annotation."""
    images, categories = {}, set()
    for i, im in enumerate(gt["images"]):
        if not (isinstance(im, dict) and _int(im.get("id")) and _int(im.get("height"))
                and _int(im.get("width")) and im["height"] > 0 and im["width"] > 0):
            return f"images[{i}] needs integer id, height > 0 and width > 0: {im!r:.120}"
        if im["id"] in images:
            return f"image id {im['id']} appears twice"
        images[im["id"]] = im
    for i, cat in enumerate(gt["categories"]):
        if not (isinstance(cat, dict) and _int(cat.get("id"))):
            return f"categories[{i}] has no integer id: {cat!r:.120}"
        categories.add(cat["id"])
    if len(categories) != len(gt["categories"]):
        return "category ids are not unique"
    if not images:
        return "no images"
    if not gt["annotations"]:
        return "no annotations: recall over no objects would be nan"
    for i, ann in enumerate(gt["annotations"]):
        problem = _bad_annotation(ann, images, categories)
        if problem:
            return f"annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'}): " \
                   f"{problem}"
    return None


def _bad_annotation(ann, images: dict, categories: set) -> str | None:
    if not isinstance(ann, dict):
        return "not an object"
    if ann.get("image_id") not in images or not _int(ann.get("image_id")):
        return f"image_id {ann.get('image_id')!r:.40} is not an image of the file"
    if ann.get("category_id") not in categories or not _int(ann.get("category_id")):
        return f"category_id {ann.get('category_id')!r:.40} is not a category of the file"
    if not _numbers(ann.get("bbox"), 4) or min(ann["bbox"][2:]) < 0:
        return f"bbox must be 4 finite numbers x, y, w, h with w, h >= 0: " \
               f"{ann.get('bbox')!r:.80}"
    if not _numbers([ann.get("area")]) or ann["area"] < 0:
        return f"area must be a finite number >= 0: {ann.get('area')!r:.40}"
    if ann.get("iscrowd", 0) not in (0, 1) or type(ann.get("iscrowd", 0)) is not int:
        return f"iscrowd must be 0 or 1: {ann.get('iscrowd')!r:.40}"
    if "segmentation" in ann:
        return _bad_segmentation(ann["segmentation"], images[ann["image_id"]])
    return None


def _kind(gt: dict) -> str:
    cats = gt["categories"]
    return "lvis" if cats and "frequency" in cats[0] else "coco"


Builder = Callable[..., EvalDataset]
REGISTRY: dict[str, Builder] = {}


def register(name: str, builder: Builder) -> None:
    """Add ``name`` -> ``builder(root: Path | None, annotation=None, image_root=None)``."""
    REGISTRY[name] = builder


def register_coco_json(name: str, annotation: str | Path, image_root: str | Path,
                       locate: Callable[[Path, dict], Path] = by_file_name) -> None:
    """Register a COCO-format json with its image folder under ``name`` (fixed paths)."""
    def build(root=None, annotation_path=None, image_dir=None) -> EvalDataset:
        ann = Path(annotation_path or annotation)
        gt = load_gt(ann)
        return EvalDataset(name, _kind(gt), gt, ann, Path(image_dir or image_root), locate)
    register(name, build)


def _standard(name: str, annotation: str, images: str, locate) -> Builder:
    def build(root=None, annotation_path=None, image_dir=None) -> EvalDataset:
        base = None if annotation_path and image_dir else data_root(root)
        ann = Path(annotation_path) if annotation_path else base / annotation
        gt = load_gt(ann)
        return EvalDataset(name, _kind(gt), gt, ann,
                           Path(image_dir) if image_dir else base / images, locate)
    return build


register("coco_2017_val", _standard("coco_2017_val", "coco/annotations/instances_val2017.json",
                                    "coco/val2017", by_file_name))
register("lvis_v1_val", _standard("lvis_v1_val", "lvis/lvis_v1_val.json", "coco", by_coco_url))


def bsds_regions(split_dirs: tuple[Path, Path], annotator: str = "median",
                 min_area: float = 0) -> dict:
    """COCO ground truth of a BSDS split's human segmentations: one image record per
    ``groundTruth`` file (``id`` = the BSDS id as int), one class-agnostic object per region of
    the annotator chosen by ``annotator`` (``fastsam_train.data.bsds.choose_annotators``; with
    ``all`` every annotator's regions), regions under ``min_area`` pixels left out. Raises
    FileNotFoundError / ValueError naming a missing folder or a bad .mat file."""
    from fastsam_train.data.bsds import choose_annotators, read_segmentations, region_masks
    from fastsam_train.masks import encode_mask

    image_dir, gt_dir = split_dirs
    files = sorted(gt_dir.glob("*.mat")) if gt_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no BSDS ground truth (*.mat) in {gt_dir}")
    images, anns = [], []
    for path in files:
        segs = read_segmentations(path)
        images.append({"id": int(path.stem), "file_name": f"{path.stem}.jpg",
                       "height": int(segs[0].shape[0]), "width": int(segs[0].shape[1])})
        for k in choose_annotators([len(np.unique(s)) for s in segs], annotator):
            for _, mask in region_masks(segs[k]):
                area = int(mask.sum())
                if area < min_area:
                    continue
                anns.append({"id": len(anns) + 1, "image_id": int(path.stem), "category_id": 1,
                             "segmentation": encode_mask(mask, text=True),
                             "area": float(area), "bbox": mask_box(mask), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "region"}]}


def mask_box(mask: np.ndarray) -> list[float]:
    """xywh of the tight box of a non-empty mask (H, W), COCO's convention."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1)]


# BSDS splits by name, under the data root in BSR's layout (<root>/BSR/BSDS500/data/{images,
# groundTruth}/<split>), a <root>/bsds500 folder or flat (fastsam_train.data.bsds.split_dirs).
BSDS_SPLITS = {"bsds500_test": "test", "bsds500_val": "val", "bsds500_train": "train"}
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".bmp", ".tif")


def bsds_folders(name: str, root: str | Path | None = None, image_dir: str | Path | None = None,
                 gt_dir: str | Path | None = None, layout: str = "auto") -> tuple[Path, Path]:
    """(image folder, ground-truth folder) of the registered split ``name`` under ``root``
    (default ``$FASTSAM_DATA``, conf: ``paths.data_dir``); ``image_dir`` / ``gt_dir`` override."""
    from fastsam_train.data.bsds import split_dirs

    if name not in BSDS_SPLITS:
        raise KeyError(f"unknown BSDS split {name!r}; registered: {sorted(BSDS_SPLITS)}")
    if image_dir and gt_dir:
        return Path(image_dir), Path(gt_dir)
    images, gts = split_dirs(data_root(root), BSDS_SPLITS[name], layout)
    return (Path(image_dir) if image_dir else images, Path(gt_dir) if gt_dir else gts)


def bsds_records(image_dir: str | Path, gt_dir: str | Path,
                 max_images: int | None = None) -> list[dict]:
    """One record per ground-truth file, sorted by id: ``{"id", "image", "gt"}``.

    Standard layout: ``BSR/BSDS500/data/images/test/<id>.jpg`` beside
    ``.../groundTruth/test/<id>.mat``. Every .mat needs an image and every image a .mat;
    anything missing raises FileNotFoundError naming the file (before any model is loaded).
    """
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    for d in (image_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"BSDS folder not found: {d}")
    images = {p.stem: p for p in sorted(image_dir.iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES}
    gts = {p.stem: p for p in gt_dir.glob("*.mat")}
    if not gts:
        raise FileNotFoundError(f"no ground truth (*.mat) in {gt_dir}")
    if no_gt := sorted(set(images) - set(gts)):
        raise FileNotFoundError(f"ground truth not found: {gt_dir / (no_gt[0] + '.mat')} "
                                f"(for image {images[no_gt[0]]})")
    if no_image := sorted(set(gts) - set(images)):
        raise FileNotFoundError(f"image not found for ground truth {gts[no_image[0]]} "
                                f"(looked for {no_image[0]}.jpg/.png in {image_dir})")
    records = [{"id": i, "image": images[i], "gt": gts[i]} for i in sorted(gts)]
    return records[:max_images] if max_images else records


def by_record(root: Path, image: dict) -> Path:
    """The image path a BSDS boundary record holds (found by listing its split folder)."""
    return image["image"]


def _bsds(name: str) -> Builder:
    def build(root=None, annotation_path=None, image_dir=None, gt_dir=None,
              layout: str = "auto", boundaries: bool = False, **options) -> EvalDataset:
        """``boundaries``: the edge task's records (image and .mat paths, no decoding; kind
        ``bsds_boundaries``); else the regions as COCO objects (``bsds_regions``)."""
        if annotation_path:
            raise ValueError(f"{name} is built from BSDS .mat files; set task.gt_dir, not "
                             "task.annotation")
        image_dir, gt_dir = bsds_folders(name, root, image_dir, gt_dir, layout)
        if boundaries:
            gt = {"images": bsds_records(image_dir, gt_dir), "annotations": [],
                  "categories": []}
            return EvalDataset(name, "bsds_boundaries", gt, gt_dir, image_dir, by_record)
        gt = bsds_regions((image_dir, gt_dir), **options)
        return EvalDataset(name, "bsds", gt, gt_dir, image_dir, by_file_name)
    return build


for _name in BSDS_SPLITS:
    register(_name, _bsds(_name))


def get_dataset(name: str, root: str | Path | None = None,
                annotation: str | Path | None = None,
                image_root: str | Path | None = None, **options) -> EvalDataset:
    """The registered dataset ``name``; ``annotation`` / ``image_root`` override its paths;
    ``options`` go to its builder (BSDS: ``gt_dir``, ``layout``, ``annotator``,
    ``min_area``, ``boundaries``)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name](root, annotation, image_root, **options)
