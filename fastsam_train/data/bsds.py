"""BSDS500 human segmentations as a conversion input (and the region reader evaluation shares).

Each ``groundTruth/<split>/<id>.mat`` holds a 1 x K cell of annotators; each annotator's
``Segmentation`` (uint16 (H, W), labels 1..R) partitions the image into R regions.

Decisions (documented in the README and ``conf/input/bsds.yaml``):

* **A region is one instance.** Splitting regions into connected components is not needed:
  every one of the 56,427 regions of all annotators of the 500 images is 8-connected (checked
  here), i.e. one piece for ``cv2.findContours``; pieces touching only diagonally, holes
  (kept as keyholes) and fragments under ``record.min_part_area`` go through SA-1B's polygon
  code. Regions under ``record.min_area`` source pixels (100 in ``conf/input/bsds.yaml``) are
  dropped: BSDS partitions leave slivers of a few pixels along boundaries (about a fifth of
  all regions), which are not objects.
* **One annotator per image**: ``median`` takes the annotator whose number of regions is the
  (lower) median, ties to the first in the file: the typical granularity, neither the coarsest
  nor the finest partition. ``fewest`` / ``most`` take the extremes; ``all`` makes every
  annotator its own sample (keys ``bsds_<id>_a<k>``; they share the image's sampling and
  train/val decision, so one image never lands on both sides).

Folder layouts: BSR's (``<root>/BSR/BSDS500/data/{images,groundTruth}/<split>``) and flat
(``<root>/{images,groundTruth}/<split>``); ``layout=auto`` takes the first of
``<root>/BSR/BSDS500/data``, ``<root>/bsds500`` and ``<root>`` that has a ``groundTruth``
folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from fastsam_train.data.inputs import Item
from fastsam_train.data.instances import Instance, build_sample
from fastsam_train.data.records import RecordOptions, SkipImage, decode_image
from fastsam_train.data.sa1b import Source
from fastsam_train.masks import encode_mask

LAYOUTS = ("auto", "bsr", "flat")
BSR_SUBDIR = Path("BSR") / "BSDS500" / "data"
ANNOTATOR_RULES = ("median", "fewest", "most", "all")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def split_dirs(root: str | Path, split: str, layout: str = "auto") -> tuple[Path, Path]:
    """(image folder, groundTruth folder) of BSDS ``split`` (train / val / test) under ``root``."""
    if layout not in LAYOUTS:
        raise ValueError(f"BSDS layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root).expanduser()
    if layout == "auto":  # the first that has groundTruth/; BSR's (the standard) if none has
        candidates = [root / BSR_SUBDIR, root / "bsds500", root]
        base = next((c for c in candidates if (c / "groundTruth").is_dir()), candidates[0])
    else:
        base = root / BSR_SUBDIR if layout == "bsr" else root
    return base / "images" / split, base / "groundTruth" / split


class MissingSegmentation(ValueError):
    """A BSDS .mat whose annotators carry no ``Segmentation`` (e.g. boundaries only)."""


def read_segmentations(path: str | Path) -> list[np.ndarray]:
    """Every annotator's label map (H, W) int32 from one BSDS ``.mat``; ValueError naming the
    file when it is unreadable, has no ``groundTruth`` cell, or an annotator has no
    ``Segmentation`` (a boundaries-only file) or a map of another size."""
    try:
        cells = loadmat(str(path))["groundTruth"].ravel()
    except Exception as exc:  # scipy raises several types for non-.mat files
        raise ValueError(f"not a BSDS groundTruth .mat file ({exc}): {path}") from exc
    if cells.size == 0:
        raise ValueError(f"groundTruth is empty: {path}")
    segs = []
    for k, cell in enumerate(cells):
        names = cell.dtype.names or ()
        if "Segmentation" not in names:
            raise MissingSegmentation(f"annotator {k + 1} has no Segmentation (fields "
                                      f"{list(names)}): {path}")
        seg = np.asarray(cell["Segmentation"][0, 0])
        if seg.ndim != 2 or seg.shape != np.asarray(cells[0]["Segmentation"][0, 0]).shape:
            raise ValueError(f"annotator {k + 1}: Segmentation of shape {seg.shape}: {path}")
        segs.append(seg.astype(np.int32))
    return segs


def choose_annotators(region_counts: list[int], rule: str) -> list[int]:
    """Indices of the annotators to use, by ``rule`` (see the module doc); ties go to the
    first annotator in the file."""
    if rule not in ANNOTATOR_RULES:
        raise ValueError(f"annotator rule must be one of {ANNOTATOR_RULES}, got {rule!r}")
    n = len(region_counts)
    if rule == "all":
        return list(range(n))
    if rule == "most":
        return [min(range(n), key=lambda i: (-region_counts[i], i))]
    order = sorted(range(n), key=lambda i: (region_counts[i], i))
    return [order[0] if rule == "fewest" else order[(n - 1) // 2]]


def region_masks(seg: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(label, mask uint8 (H, W))`` per region of a label map (H, W), by label."""
    for label in np.unique(seg):
        yield int(label), (seg == label).astype(np.uint8)


@dataclass(frozen=True)
class BsdsImage:
    """One image and the annotator chosen for this sample (or why the .mat is unusable)."""

    image_id: str
    image_path: Path | None
    gt_path: Path
    annotator: int = 0
    annotators: int = 0
    segmentation: np.ndarray | None = None
    error: tuple[str, str] | None = None  # (reason, detail) -> SkipImage


class BsdsInput:
    """BSDS500 ``splits`` under ``root`` (see the module doc for layout and decisions).

    Sources are chunks of ``chunk`` image ids per split, named ``bsds-<split>-<i>``.
    """

    kind = "bsds"

    def __init__(self, root: str, layout: str = "auto", splits: list[str] | tuple = ("train",
                 "val"), annotator: str = "median", chunk: int = 1000):
        choose_annotators([1], annotator)  # validates the rule
        split_dirs(root, "train", layout)  # validates the layout
        if isinstance(splits, str) or not splits:
            raise ValueError(f"input.splits must be a non-empty list, got {splits!r}")
        self.root, self.layout, self.splits = root, layout, [str(s) for s in splits]
        self.annotator, self.chunk = annotator, chunk

    def settings(self) -> dict:
        return {"type": self.kind, "splits": self.splits, "annotator": self.annotator}

    def sources(self) -> list[Source]:
        sources = []
        for split in self.splits:
            image_dir, gt_dir = split_dirs(self.root, split, self.layout)
            for folder in (image_dir, gt_dir):
                if not folder.is_dir():
                    raise FileNotFoundError(f"BSDS folder not found: {folder} (input.root="
                                            f"{self.root}, layout {self.layout})")
            ids = sorted(p.stem for p in gt_dir.glob("*.mat"))
            if not ids:
                raise FileNotFoundError(f"no ground truth (*.mat) in {gt_dir}")
            for start in range(0, len(ids), self.chunk):
                sources.append(Source(name=f"bsds-{split}-{start // self.chunk:05d}",
                                      path=gt_dir, stems=tuple(ids[start:start + self.chunk])))
        return sorted(sources, key=lambda s: s.name)

    def items(self, source: Source, errors: list[tuple[str, str]]) -> Iterator[Item]:
        image_dir = source.path.parent.parent / "images" / source.path.name
        for image_id in source.stems:
            gt_path = source.path / f"{image_id}.mat"
            found = [image_dir / f"{image_id}{s}" for s in IMAGE_SUFFIXES
                     if (image_dir / f"{image_id}{s}").is_file()]
            base = BsdsImage(image_id, found[0] if found else None, gt_path)
            try:
                segs = read_segmentations(gt_path)
            except MissingSegmentation as exc:
                yield Item(f"bsds_{image_id}", f"bsds_{image_id}",
                           replace(base, error=("no_segmentation", str(exc))))
                continue
            except ValueError as exc:
                yield Item(f"bsds_{image_id}", f"bsds_{image_id}",
                           replace(base, error=("bad_mat", str(exc))))
                continue
            chosen = choose_annotators([len(np.unique(s)) for s in segs], self.annotator)
            for k in chosen:
                key = f"bsds_{image_id}" + (f"_a{k + 1}" if self.annotator == "all" else "")
                yield Item(key, f"bsds_{image_id}", replace(
                    base, annotator=k + 1, annotators=len(segs), segmentation=segs[k]))

    def to_sample(self, item: Item, opts: RecordOptions, drops: Counter) -> dict:
        rec: BsdsImage = item.payload
        if rec.error is not None:
            raise SkipImage(*rec.error)
        if rec.image_path is None:
            raise SkipImage("missing_image", f"no image for {rec.gt_path}")
        image = decode_image(rec.image_path.read_bytes(), opts.max_pixels, str(rec.image_path),
                             orientation=False)
        if image.shape[:2] != rec.segmentation.shape:
            raise SkipImage("image_size_mismatch", f"{rec.image_path} is {image.shape[:2]}, "
                            f"{rec.gt_path} is {rec.segmentation.shape}")
        instances = [Instance(encode_mask(mask), 0, {"id": label}) for label, mask in
                     region_masks(rec.segmentation)]
        info = {"image_id": rec.image_id, "file_name": rec.image_path.name,
                "annotator": rec.annotator, "annotators": rec.annotators}
        return build_sample(item.key, image, instances, opts, drops, info)

    def summary(self) -> dict:
        return {}
