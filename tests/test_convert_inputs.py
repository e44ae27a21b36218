"""Conversion inputs beyond SA-1B: COCO-format json (COCO, LVIS) and BSDS500 .mat files.

Label fidelity is checked against each format's own decoding (pycocotools for COCO/LVIS, the
.mat label maps for BSDS); bad input must be a counted skip or one clear error naming the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import bsds_subset, compose_config, kill_when_done
from pycocotools import mask as mask_utils
from scipy.io import loadmat, savemat

from fastsam_train.data.bsds import choose_annotators, read_segmentations
from fastsam_train.data.convert import convert_from_config
from fastsam_train.data.labels import parse_label
from fastsam_train.data.polygons import mask_iou, polygon_to_mask, resize_mask
from fastsam_train.data.shards import iter_shard

REPO = Path(__file__).resolve().parents[1]


def convert(out: Path, *overrides: str) -> dict:
    return convert_from_config(compose_config("convert", f"output={out}", "workers=1",
                                              *overrides))


def samples(out: Path, split: str = "train") -> list[dict]:
    return [s for shard in sorted((out / split).glob("*.tar")) for s in iter_shard(shard)]


def label_masks(sample: dict) -> tuple[list[np.ndarray], list[int], dict]:
    """The sample's label rasterised as training sees it: masks, classes, json info."""
    info = json.loads(sample["json"])
    size = tuple(info["size"])
    text = sample["txt"].decode()
    polys = parse_label(text, size)
    classes = [int(line.split()[0]) for line in text.strip().splitlines()]
    return [polygon_to_mask(p, size) for p in polys], classes, info


def coco_reference(ann: dict, hw: tuple[int, int]) -> np.ndarray:
    """pycocotools' own decoding of a COCO segmentation (the steps of COCO.annToMask)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, *hw))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, *hw)
    else:
        rle = seg
    return mask_utils.decode(rle)


def fidelity(out: Path, anns_by_id: dict, hw_of: dict) -> np.ndarray:
    ious = []
    for sample in samples(out):
        masks, _, info = label_masks(sample)
        for mask, inst in zip(masks, info["instances"], strict=True):
            ann = anns_by_id[inst["id"]]
            ref = resize_mask(coco_reference(ann, hw_of[ann["image_id"]]), mask.shape)
            ious.append(mask_iou(mask, ref))
    return np.array(ious)


# --- COCO (real panopticapi sample: compressed RLE, crowd regions, 133 categories) ----------
@pytest.fixture
def coco_sample(shared_data) -> tuple[Path, Path]:
    folder = shared_data / "coco_sample"
    return folder / "panoptic_coco_detection_format.json", folder / "input_images"


def coco_args(ann: Path, images: Path, *more: str) -> list[str]:
    return ["input=coco", f"input.annotation={ann}", f"input.image_root={images}",
            "val_fraction=0", *more]


def test_coco_rle_labels_match_pycocotools(coco_sample, tmp_path):
    ann, images = coco_sample
    data = json.loads(ann.read_text())
    manifest = convert(tmp_path / "out", *coco_args(ann, images, "record.max_side=320"))
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert manifest["annotation_drops"] == {"crowd": crowd} and crowd == 3
    assert manifest["samples"]["train"] == 2 and not manifest["skipped"]
    assert manifest["instances"] == len(data["annotations"]) - crowd
    hw = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    ious = fidelity(tmp_path / "out", {a["id"]: a for a in data["annotations"]}, hw)
    assert len(ious) == 47 and ious.mean() > 0.93 and np.median(ious) > 0.95, ious.mean()
    keys = sorted(s["__key__"] for s in samples(tmp_path / "out"))
    assert keys == ["panoptic_coco_detection_format_142238",
                    "panoptic_coco_detection_format_439180"]


def uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a mask (H, W): run lengths in column-major order, 0s first."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    runs = np.concatenate([[0], runs]) if flat[0] else runs
    return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


def test_coco_uncompressed_rle_crowd_and_categories(coco_sample, tmp_path):
    """Uncompressed RLE (as COCO stores crowds) gives the same labels as compressed; crowds
    are kept on request; categories become class ids with a names map in the manifest."""
    ann, images = coco_sample
    data = json.loads(ann.read_text())
    plain = copy.deepcopy(data)
    for a in plain["annotations"]:
        a["segmentation"] = uncompressed(mask_utils.decode(a["segmentation"]))
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    convert(tmp_path / "a", *coco_args(ann, images, "record.max_side=256", "input.crowd=keep",
                                       "input.name=s"))
    manifest = convert(tmp_path / "b", *coco_args(tmp_path / "plain.json", images,
                                                  "record.max_side=256", "input.crowd=keep",
                                                  "input.categories=true", "input.name=s"))
    a, b = samples(tmp_path / "a"), samples(tmp_path / "b")
    assert [s["jpg"] for s in a] == [s["jpg"] for s in b]
    strip = [[line.split(" ", 1)[1] for line in s["txt"].decode().splitlines()] for s in a]
    assert strip == [[line.split(" ", 1)[1] for line in s["txt"].decode().splitlines()]
                     for s in b]
    assert manifest["instances"] == len(data["annotations"]) == 50
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert manifest["categories"]["0"] == {"id": cats[0]["id"], "name": cats[0]["name"]}
    by_id = {x["id"]: x["category_id"] for x in data["annotations"]}
    index = {c["id"]: i for i, c in enumerate(cats)}
    for sample in b:
        _, classes, info = label_masks(sample)
        assert classes == [index[by_id[inst["id"]]] for inst in info["instances"]]
    assert all(line.startswith("0 ") for s in a for line in s["txt"].decode().splitlines())


def test_coco_category_filter(coco_sample, tmp_path):
    ann, images = coco_sample
    manifest = convert(tmp_path / "p", *coco_args(ann, images, "record.max_side=128",
                                                  "input.category_filter=[person]",
                                                  "input.categories=true"))
    assert manifest["categories"] == {"0": {"id": 1, "name": "person"}}
    data = json.loads(ann.read_text())
    people = sum(a["category_id"] == 1 and not a["iscrowd"] for a in data["annotations"])
    assert manifest["instances"] == people and manifest["annotation_drops"][
        "category_filtered"] == sum(a["category_id"] != 1 for a in data["annotations"])
    with pytest.raises(ValueError, match="panoptic_coco_detection_format.json.*matches none"):
        convert(tmp_path / "q", *coco_args(ann, images, "input.category_filter=[unicorn]"))


# --- LVIS (real v0.5 annotations: polygons, multi-polygon objects; generated images) --------
def lvis_images(data: dict, root: Path, count: int) -> dict:
    """JPEGs of the right sizes at <root>/<split>/<name> from coco_url, for the first
    ``count`` images; returns the json cut to them."""
    rng = np.random.default_rng(0)
    keep = data["images"][:count]
    for im in keep:
        split, name = im["coco_url"].split("/")[-2:]
        (root / split).mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(root / split / name), noise)
    ids = {im["id"] for im in keep}
    return {**data, "images": keep,
            "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}


def test_lvis_polygons_and_multipolygons_match_pycocotools(shared_data, tmp_path):
    data = json.loads((shared_data / "lvis_sample" / "lvis_v0.5_val_100.json").read_text())
    cut = lvis_images(data, tmp_path / "coco", 12)  # 57 objects, 9 of several polygons
    (tmp_path / "lvis.json").write_text(json.dumps(cut))
    manifest = convert(tmp_path / "out", *coco_args(tmp_path / "lvis.json", tmp_path / "coco",
                                                    "record.max_side=400", "folder_chunk=5"))
    empty = {im["id"] for im in cut["images"]} - {a["image_id"] for a in cut["annotations"]}
    assert len(empty) == 1 and manifest["skipped_by_reason"] == {"no_annotations": 1}
    assert manifest["samples"]["train"] == 11 and len(manifest["sources"]) == 3  # chunks of 5
    multi = {a["id"] for a in cut["annotations"] if len(a["segmentation"]) > 1}
    hw = {im["id"]: (im["height"], im["width"]) for im in cut["images"]}
    ious = fidelity(tmp_path / "out", {a["id"]: a for a in cut["annotations"]}, hw)
    assert len(ious) == 57 and ious.mean() > 0.95 and np.median(ious) > 0.97, ious.mean()
    kept = {inst["id"] for s in samples(tmp_path / "out")
            for inst in json.loads(s["json"])["instances"]}
    assert multi and multi <= kept  # every multi-polygon object survives, as one instance


def test_coco_bad_input_is_counted_or_named(coco_sample, tmp_path):
    ann, images = coco_sample
    data = json.loads(ann.read_text())
    bad = copy.deepcopy(data)
    first = bad["images"][0]["id"]
    bad["annotations"][0]["image_id"] = 999  # not in images
    bad["annotations"][1]["segmentation"] = "a string"  # unknown type
    bad["annotations"][2]["segmentation"] = [[10, 10, 20, 20], [5, 5, 40, 5, 40, 30]]  # 2 pts
    bad["annotations"][3]["segmentation"] = [[10, 10, 20, 20]]  # nothing left
    bad["annotations"][4]["segmentation"] = {"size": [1, 1], "counts": "PP"}  # wrong size
    bad["images"].append({"id": 7, "file_name": "../../etc/passwd", "height": 5, "width": 5})
    bad["images"].append({"id": 8, "file_name": "absent.jpg", "height": 5, "width": 5})
    bad["annotations"] += [{**bad["annotations"][5], "id": 90 + i, "image_id": i}
                           for i in (7, 8)]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    manifest = convert(tmp_path / "out", *coco_args(tmp_path / "bad.json", images))
    drops = manifest["annotation_drops"]
    assert drops["image_not_in_images"] == 1 and drops["unknown_segmentation"] == 1
    assert drops["ring_under_3_points"] == 2 and drops["no_valid_polygon"] == 1
    assert drops["rle_size_mismatch"] == 1
    assert manifest["skipped_by_reason"] == {"bad_file_name": 1, "missing_image": 1}
    assert manifest["ids"]["train"] == [f"bad_{first}", f"bad_{bad['images'][1]['id']}"]
    (tmp_path / "notcoco.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="notcoco.json"):
        convert(tmp_path / "o2", *coco_args(tmp_path / "notcoco.json", images))
    with pytest.raises(FileNotFoundError, match="absent.json"):
        convert(tmp_path / "o3", *coco_args(tmp_path / "absent.json", images))


# --- BSDS500 (real .mat files from ../shared, generated ones in the exact format) ------------
def test_bsds_regions_match_the_annotation(shared_data, tmp_path):
    root = bsds_subset(shared_data, tmp_path / "bsds", {"train": 3, "val": 3})
    manifest = convert(tmp_path / "out", "input=bsds", f"input.root={root}", "val_fraction=0")
    assert manifest["samples"]["train"] == 6 and not manifest["skipped"]
    ious, regions = [], 0
    for sample in samples(tmp_path / "out"):
        masks, classes, info = label_masks(sample)
        split = "train" if (root / "images" / "train" / info["file_name"]).exists() else "val"
        segs = read_segmentations(root / "groundTruth" / split / f"{info['image_id']}.mat")
        k = choose_annotators([len(np.unique(s)) for s in segs], "median")[0]
        assert info["annotator"] == k + 1 and set(classes) == {0}
        labels, counts = np.unique(segs[k], return_counts=True)
        assert [inst["id"] for inst in info["instances"]] == labels[counts >= 100].tolist()
        regions += len(labels)
        for mask, inst in zip(masks, info["instances"], strict=True):
            ref = (segs[k] == inst["id"]).astype(np.uint8)
            ious.append(mask_iou(mask, resize_mask(ref, mask.shape)))
    ious = np.array(ious)
    assert manifest["annotation_drops"]["below_min_area"] == regions - len(ious)
    assert ious.mean() > 0.95 and np.median(ious) > 0.97, ious.mean()


def test_bsds_annotator_rules_layouts_and_bad_mat(shared_data, tmp_path):
    root = bsds_subset(shared_data, tmp_path / "BSR" / "BSDS500" / "data", {"train": 2})
    mat = sorted((root / "groundTruth" / "train").glob("*.mat"))[0]
    cells = loadmat(str(mat))["groundTruth"]
    everyone = convert(tmp_path / "all", "input=bsds", f"input.root={tmp_path}",
                       "input.annotator=all", "input.splits=[train]", "record.max_side=160",
                       "val_fraction=0.5")
    per_image = {k.rsplit("_a", 1)[0] for s in everyone["ids"].values() for k in s}
    assert len(per_image) == 2 and sum(map(len, everyone["ids"].values())) == \
        sum(loadmat(str(m))["groundTruth"].size for m in (root / "groundTruth" / "train")
            .glob("*.mat"))
    for image in per_image:  # every annotator of an image lands in the same split
        assert sum(any(k.startswith(image + "_") for k in v)
                   for v in everyone["ids"].values()) == 1
    boundaries_only = np.empty((1, 2), dtype=object)
    for k in range(2):
        boundaries_only[0, k] = {"Boundaries": cells[0, k]["Boundaries"][0, 0]}
    savemat(str(mat), {"groundTruth": boundaries_only})
    (root / "groundTruth" / "train" / "1234.mat").write_bytes(b"not a mat file")
    manifest = convert(tmp_path / "bad", "input=bsds", f"input.root={tmp_path}",
                       "input.layout=bsr", "input.splits=[train]", "record.max_side=160")
    assert manifest["skipped_by_reason"] == {"no_segmentation": 1, "bad_mat": 1}
    details = {s["reason"]: s["detail"] for s in manifest["skipped"]}
    assert mat.name in details["no_segmentation"] and "1234.mat" in details["bad_mat"]
    with pytest.raises(FileNotFoundError, match="BSDS folder not found"):
        convert(tmp_path / "x", "input=bsds", f"input.root={tmp_path}", "input.splits=[test]")


def test_median_annotator_rule():
    assert choose_annotators([18, 5, 13, 16, 30, 16], "median") == [3]  # 5 13 [16] 16 18 30
    assert choose_annotators([7, 35, 4, 27, 12], "median") == [4]
    assert choose_annotators([3, 3], "median") == [0]
    assert choose_annotators([3, 9, 1], "fewest") == [2] and \
        choose_annotators([3, 9, 9], "most") == [1]
    with pytest.raises(ValueError, match="annotator rule"):
        choose_annotators([1], "mean")


# --- the guarantees of the SA-1B path, for the other inputs --------------------------------
def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts}


def test_coco_parallel_and_resumed_after_kill_give_identical_bytes(shared_data, tmp_path):
    data = json.loads((shared_data / "lvis_sample" / "lvis_v0.5_val_100.json").read_text())
    (tmp_path / "lvis.json").write_text(json.dumps(lvis_images(data, tmp_path / "coco", 14)))
    args = [sys.executable, str(REPO / "data_tools" / "convert.py"), "input=coco",
            f"input.annotation={tmp_path / 'lvis.json'}", f"input.image_root={tmp_path / 'coco'}",
            "folder_chunk=2", "samples_per_shard=2", "record.max_side=160", "val_fraction=0.3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*args, f"output={tmp_path / 'ref'}", "workers=1"], check=True,
                   capture_output=True, env=env)
    subprocess.run([*args, f"output={tmp_path / 'par'}", "workers=2"], check=True,
                   capture_output=True, env=env)
    assert digest_tree(tmp_path / "par") == digest_tree(tmp_path / "ref")
    proc = subprocess.Popen([*args, f"output={tmp_path / 'run'}", "workers=1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert 2 <= kill_when_done(proc, tmp_path / "run" / "done") < 7, "the kill should land mid-run"
    subprocess.run([*args, f"output={tmp_path / 'run'}", "workers=1"], check=True,
                   capture_output=True, env=env)
    assert digest_tree(tmp_path / "run") == digest_tree(tmp_path / "ref")

