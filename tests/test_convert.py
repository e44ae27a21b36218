"""SA-1B -> shards: schema, label fidelity, bad input, hostile tars, resume after kill -9."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import compose_config, kill_when_done
from pycocotools import mask as mask_utils

from data_tools.render_shard import render
from fastsam_train.data.convert import convert_from_config as convert
from fastsam_train.data.demo import sa1b_record, synth_image
from fastsam_train.data.labels import parse_label
from fastsam_train.data.polygons import mask_iou, polygon_to_mask, resize_mask
from fastsam_train.data.shards import iter_shard

REPO = Path(__file__).resolve().parents[1]


def convert_cfg(inputs, out, *overrides):
    return compose_config("convert", f"input.paths={list(map(str, inputs))}", f"output={out}",
                          "sample.fraction=1.0", "workers=1", *overrides)


def samples(out: Path, split: str = "train"):
    for shard in sorted((out / split).glob("*.tar")):
        yield from iter_shard(shard)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_schema_sizes_and_manifest(demo_tars, tmp_path):
    manifest = convert(convert_cfg(demo_tars, tmp_path, "record.max_side=160",
                                   "samples_per_shard=4", "val_fraction=0.25"))
    assert manifest["complete"] and manifest["samples"]["train"] + manifest["samples"]["val"] == 12
    assert manifest["samples"]["val"] > 0 and not manifest["skipped"]
    for split in ("train", "val"):
        sizes = json.loads((tmp_path / split / "sizes.json").read_text())
        assert sum(sizes.values()) == manifest["samples"][split]
        assert all(n <= 4 for n in sizes.values())
        assert sorted(s["__key__"] for s in samples(tmp_path, split)) == manifest["ids"][split]
    for sample in samples(tmp_path):
        image = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (120, 160, 3)
        lines = sample["txt"].decode().strip().splitlines()
        info = json.loads(sample["json"])
        assert len(lines) == len(info["instances"]) > 0 and info["size"] == [120, 160]
        for line in lines:
            values = np.array(line.split()[1:], dtype=float)
            assert line.startswith("0 ") and values.size >= 6 and values.size % 2 == 0
            assert values.min() >= 0 and values.max() <= 1
        for inst in info["instances"]:
            assert set(inst) == {"id", "bbox", "area", "predicted_iou", "stability_score"}


def test_polygons_reproduce_the_source_masks(demo_tars, tmp_path):
    convert(convert_cfg(demo_tars[:1], tmp_path, "record.max_side=200", "val_fraction=0"))
    source = {}
    with tarfile.open(demo_tars[0]) as tar:
        for m in tar:
            if m.name.endswith(".json"):
                source[m.name[:-5]] = json.loads(tar.extractfile(m).read())
    ious = []
    for sample in samples(tmp_path):
        info = json.loads(sample["json"])
        anns = {a["id"]: a for a in source[sample["__key__"]]["annotations"]}
        size = tuple(info["size"])
        for poly, inst in zip(parse_label(sample["txt"].decode(), size), info["instances"],
                              strict=True):
            ref = resize_mask(mask_utils.decode(anns[inst["id"]]["segmentation"]), size)
            ious.append(mask_iou(polygon_to_mask(poly, size), ref))
    assert len(ious) > 20 and np.mean(ious) > 0.95 and np.median(ious) > 0.97


def good_pair(image_id: int, hw=(120, 160)) -> dict[str, bytes]:
    rng = np.random.default_rng(image_id)
    image, masks = synth_image(rng, hw, 5)
    record = sa1b_record(image_id, hw, masks, rng)
    jpg = cv2.imencode(".jpg", image)[1].tobytes()
    return {f"sa_{image_id}.jpg": jpg, f"sa_{image_id}.json": json.dumps(record).encode()}


def bad_members() -> dict[str, bytes]:
    members = {}
    for i in range(1, 9):
        members.update(good_pair(i))
    members["sa_2.jpg"] = members["sa_2.jpg"][: len(members["sa_2.jpg"]) // 2]  # truncated
    members["sa_3.json"] = b'{"image": {"image_id": 3,'  # malformed
    del members["sa_4.json"]  # jpg without json
    del members["sa_5.jpg"]  # json without jpg
    rec = json.loads(members["sa_6.json"])
    rec["annotations"] = []
    members["sa_6.json"] = json.dumps(rec).encode()
    rec = json.loads(members["sa_7.json"])
    rec["annotations"][0]["segmentation"]["size"] = [60, 80]  # RLE disagrees with the image
    rec["annotations"][1]["area"] = 0
    members["sa_7.json"] = json.dumps(rec).encode()
    members["../../escape/sa_9.jpg"] = good_pair(9)["sa_9.jpg"]  # hostile member path
    members["sa_9.json"] = good_pair(9)["sa_9.json"]
    return members


def test_bad_input_is_counted_not_fatal(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_tar(src / "sa_000000.tar", bad_members())
    (src / "sa_000001.tar").write_bytes(b"this is not a tar archive" * 40)
    whole = write_tar(tmp_path / "whole.tar", {k: v for k, v in good_pair(20).items()}
                      | good_pair(21))
    with tarfile.open(whole) as tar:
        last = tar.getmembers()[-1]
    cut = last.offset_data + last.size // 2  # inside the last member's data
    (src / "sa_000002.tar").write_bytes(whole.read_bytes()[:cut])
    manifest = convert(convert_cfg([src], tmp_path / "out", "val_fraction=0"))
    reasons = manifest["skipped_by_reason"]
    # sa_4 has no json; sa_21's json was lost to the truncation (its jpg was read whole);
    # ../../escape/sa_9.jpg is in another folder than sa_9.json, so neither has a partner
    assert reasons == {"corrupt_image": 1, "bad_json": 1, "missing_json": 3,
                       "missing_image": 2, "no_annotations": 1, "not_a_tar": 1,
                       "truncated_tar": 1}
    assert manifest["annotation_drops"] == {"rle_size_mismatch": 1, "zero_area": 1}
    kept = manifest["ids"]["train"]
    assert {"sa_1", "sa_7", "sa_8", "sa_20"} <= set(kept) and "sa_9" not in kept
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_extracted_folder_gives_the_same_samples(demo_tars, tmp_path):
    folder = tmp_path / "extracted"
    folder.mkdir()
    with tarfile.open(demo_tars[0]) as tar:
        for m in tar:
            (folder / m.name).write_bytes(tar.extractfile(m).read())
    convert(convert_cfg([demo_tars[0]], tmp_path / "a", "val_fraction=0"))
    convert(convert_cfg([folder], tmp_path / "b", "val_fraction=0", "folder_chunk=4"))
    a = {s["__key__"]: s["txt"] for s in samples(tmp_path / "a")}
    b = {s["__key__"]: s["txt"] for s in samples(tmp_path / "b")}
    assert a == b and len(a) == 6
    assert len(list((tmp_path / "b" / "done").glob("*.json"))) == 2


def test_wrong_paths_and_configs_fail_clearly(demo_tars, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        convert(convert_cfg([tmp_path / "nope"], tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no SA-1B"):
        convert(convert_cfg([tmp_path / "empty"], tmp_path / "out"))
    with pytest.raises(ValueError, match="multipart"):
        convert(convert_cfg(demo_tars, tmp_path / "out", "record.multipart=union"))
    with pytest.raises(ValueError, match="strategy"):
        convert(convert_cfg(demo_tars, tmp_path / "out", "sample.strategy=random"))
    convert(convert_cfg(demo_tars, tmp_path / "out2"))
    with pytest.raises(ValueError, match="other settings"):
        convert(convert_cfg(demo_tars, tmp_path / "out2", "record.max_side=64"))


def test_slurm_style_task_split_then_finalize(demo_tars, tmp_path):
    out = tmp_path / "out"
    parts = [convert(convert_cfg(demo_tars, out, "stage=convert", f"task.index={i}",
                                 "task.count=2")) for i in range(2)]
    assert [p["converted"] for p in parts] == [1, 1]
    manifest = convert(convert_cfg(demo_tars, out, "stage=finalize"))
    assert manifest["complete"] and sum(manifest["samples"].values()) == 12


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts}


def test_resume_after_kill_gives_identical_shards(tmp_path):
    from fastsam_train.data.demo import make_demo_sa1b

    tars = make_demo_sa1b(tmp_path / "in", num_tars=6, images_per_tar=5, height=360,
                          width=480, seed=3)
    args = [sys.executable, str(REPO / "data_tools" / "convert_sa1b.py"),
            f"input=[{tmp_path / 'in'}]", "sample.fraction=1.0", "workers=1",
            "samples_per_shard=2", "val_fraction=0.2"]
    subprocess.run([*args, f"output={tmp_path / 'ref'}"], check=True, capture_output=True)
    proc = subprocess.Popen([*args, f"output={tmp_path / 'run'}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    finished = kill_when_done(proc, tmp_path / "run" / "done")
    assert 2 <= finished < len(tars), "the kill should land mid-run"
    (tmp_path / "run" / "train" / ".sa_000005-000000.tar.tmp1").write_bytes(b"partial")
    subprocess.run([*args, f"output={tmp_path / 'run'}"], check=True, capture_output=True)
    assert digest_tree(tmp_path / "run") == digest_tree(tmp_path / "ref")


def test_real_sa1b_image_at_full_size(shared_data, tmp_path):
    path = sorted((shared_data / "sa1b_images").glob("sa_*.jpg"))[0]
    raw = path.read_bytes()
    hw = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    rng = np.random.default_rng(0)
    _, masks = synth_image(rng, hw, 12)
    record = sa1b_record(7, hw, masks, rng)
    write_tar(tmp_path / "sa_000000.tar", {"sa_7.jpg": raw,
                                           "sa_7.json": json.dumps(record).encode()})
    convert(convert_cfg([tmp_path / "sa_000000.tar"], tmp_path / "out", "val_fraction=0"))
    (sample,) = list(samples(tmp_path / "out"))
    info = json.loads(sample["json"])
    assert max(info["size"]) == 1024 and info["orig_size"] == list(hw)
    size = tuple(info["size"])
    ious = [mask_iou(polygon_to_mask(p, size), resize_mask(m, size))
            for p, m in zip(parse_label(sample["txt"].decode(), size), masks, strict=True)]
    assert np.mean(ious) > 0.97


def test_render_writes_overlays(demo_tars, tmp_path):
    convert(convert_cfg(demo_tars, tmp_path / "out", "val_fraction=0"))
    written = render(tmp_path / "out" / "train", tmp_path / "png", count=3)
    assert len(written) == 3
    image = cv2.imread(str(written[0]))
    assert image.shape == (240, 640, 3) and image[:, 320:].std() > 0
    shutil.rmtree(tmp_path / "out" / "train")
    with pytest.raises(FileNotFoundError):
        render(tmp_path / "out" / "train", tmp_path / "png", count=1)
