"""Hostile and broken input (issue 13): each crafted input gets a counted skip or one clear
error, never a crash, a hang, a huge allocation or a silently wrong result; what was already
written stays intact. Then a seeded fuzz pass (byte flips and truncations) over a valid SA-1B
tar, a valid shard, a valid checkpoint and a valid COCO json."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import traceback
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from eval_helpers import box_gt, predictions
from helpers import compose_config

import eval.run as eval_run
from eval.core import evaluate_stream, read_rgb, to_prediction
from eval.datasets import load_gt
from eval.proposals import ProposalEvaluator
from eval.report import PredictionWriter
from fastsam_train import images as image_io
from fastsam_train import ultra
from fastsam_train.cli import main as cli_main
from fastsam_train.data.convert import ConvertOptions, convert_dataset
from fastsam_train.data.demo import sa1b_record, synth_image
from fastsam_train.data.inputs import SA1BInput
from fastsam_train.data.labels import parse_label
from fastsam_train.data.records import RecordOptions
from fastsam_train.data.sa1b import valid_key
from fastsam_train.data.shards import iter_shard
from fastsam_train.images import ImageReadError, decode_image
from fastsam_train.infer import PredictOptions, Predictor, PromptError, Segmentation
from fastsam_train.infer.weights import Weights, save_weights
from fastsam_train.masks import rle_counts

REPO = Path(__file__).resolve().parents[1]
HW = (60, 80)


# --- helpers ------------------------------------------------------------------------------------
def pair(image_id: int, hw=HW, objects: int = 4) -> tuple[bytes, dict]:
    """A synthetic SA-1B image (JPEG bytes) and its json record."""
    rng = np.random.default_rng(image_id)
    image, masks = synth_image(rng, hw, objects)
    return cv2.imencode(".jpg", image)[1].tobytes(), sa1b_record(image_id, hw, masks, rng)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar of ``members``; names may carry surrogate escapes (bytes that are not UTF-8)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def members_of(records: dict[str, tuple[bytes, dict]]) -> dict[str, bytes]:
    out = {}
    for stem, (jpg, record) in records.items():
        out[f"{stem}.jpg"] = jpg
        out[f"{stem}.json"] = json.dumps(record).encode()
    return out


def convert(inputs: list[Path], out: Path, workers: int = 1, **record) -> dict:
    """The converter through its one entry function (as data_tools/convert.py runs it)."""
    opts = ConvertOptions(fraction=1.0, val_fraction=0.0, samples_per_shard=100,
                          record=RecordOptions(max_side=64, **record))
    return convert_dataset(SA1BInput([str(p) for p in inputs]), out, opts, workers)


def samples(out: Path) -> dict[str, dict]:
    """Every sample written under ``out/train``, by key; keys must be unique."""
    found: dict[str, dict] = {}
    for shard in sorted((out / "train").glob("*.tar")):
        for sample in iter_shard(shard):
            assert sample["__key__"] not in found, f"key {sample['__key__']} written twice"
            found[sample["__key__"]] = sample
    return found


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.tar"))}


def check_written(out: Path, manifest: dict) -> dict[str, dict]:
    """The output is self-consistent: sizes.json = samples in shards = manifest ids; every key
    readable; every image a clean JPEG of its json size; labels in [0, 1], one per instance."""
    found = samples(out)
    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(found) == manifest["samples"]["train"]
    assert sorted(found) == manifest["ids"]["train"]
    for key, sample in found.items():
        assert valid_key(key) and {"jpg", "txt", "json"} <= set(sample)
        image = decode_image(sample["jpg"], 10**6, name=key)
        info = json.loads(sample["json"])
        assert list(image.shape[:2]) == info["size"]
        lines = parse_label(sample["txt"].decode(), (1, 1))
        assert len(lines) == len(info["instances"]) > 0
        assert all(p.size >= 6 and p.min() >= 0 and p.max() <= 1 for p in lines)
    return found


def encode_counts(runs: list[int]) -> str:
    """COCO's compressed RLE string for ``runs`` (pycocotools' rleToString, for crafting)."""
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
            if not more:
                break
    return "".join(chars)


def huge_jpeg(height: int = 20000, width: int = 20000) -> bytes:
    """A few hundred bytes of JPEG whose frame header declares ``height`` x ``width``."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def garbage_in_the_middle(jpg: bytes, seed: int = 0) -> bytes:
    """Random bytes over the middle of the entropy-coded data; the end marker stays."""
    rng = np.random.default_rng(seed)
    mid = len(jpg) // 2
    return jpg[:mid] + rng.integers(0, 256, 64, dtype=np.uint8).tobytes() + jpg[mid + 64:]


# --- 4. one bad field is a counted skip -----------------------------------------------------------
def hostile_records() -> tuple[dict, dict]:
    """(clean, hostile) records by stem: each hostile image breaks one field of annotation 0."""
    clean = {f"sa_{i}": pair(i) for i in range(1, 12)}
    hostile = {k: (jpg, json.loads(json.dumps(rec))) for k, (jpg, rec) in clean.items()}

    def ann(stem):
        return hostile[stem][1]["annotations"]

    h, w = HW
    ann("sa_1")[0]["area"] = "12"
    ann("sa_2")[0]["predicted_iou"] = None
    ann("sa_3")[0] = 7
    ann("sa_4")[0]["bbox"] = [1.0, 2.0, 3.0]
    ann("sa_5")[0]["segmentation"]["size"] = [h, w, 1, 2, 3]
    ann("sa_6")[0]["segmentation"]["counts"] = encode_counts([10**12, h * w])
    runs = rle_counts(ann("sa_7")[0]["segmentation"]["counts"]).tolist()
    ann("sa_7")[0]["segmentation"]["counts"] = encode_counts(runs[:-1] + [runs[-1] - 1])
    ann("sa_8")[0]["stability_score"] = float("nan")  # json writes NaN, json.loads reads it
    hostile["sa_9"][1]["image"]["width"] = "80"
    return clean, hostile


# sa_5 (size of 5) and sa_6 (a count of 40 bits, over-long) are bad_rle; sa_7 sums to h*w - 1
DROPS = {"bad_area": 1, "bad_score": 2, "bad_annotation": 1, "bad_bbox": 1, "bad_rle": 2,
         "rle_total_mismatch": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_one_bad_field_is_a_counted_skip_of_that_annotation(tmp_path, workers):
    clean, hostile = hostile_records()
    stems = sorted(clean, key=lambda s: int(s[3:]))
    halves = [stems[:6], stems[6:]]  # two tars, so two workers each get one
    for name, recs in (("clean", clean), ("hostile", hostile)):
        folder = tmp_path / name
        folder.mkdir()
        for i, part in enumerate(halves):
            write_tar(folder / f"sa_00000{i}.tar", members_of({s: recs[s] for s in part}))
    extra = write_tar(tmp_path / "hostile" / "sa_000002.tar", {
        "sa_\udcff12.jpg": clean["sa_10"][0], "sa_\udcff12.json": b"{}",  # not valid UTF-8
        "sa_13.v2.jpg": clean["sa_10"][0], "sa_13.v2.json": b"{}"})  # a dot in the key
    ref = convert([tmp_path / "clean"], tmp_path / "ref", workers)
    got = convert([tmp_path / "hostile"], tmp_path / "out", workers)
    assert got["complete"] and got["annotation_drops"] == DROPS
    assert got["skipped_by_reason"] == {"bad_json": 1, "bad_key": 4}
    assert {s["detail"] for s in got["skipped"] if s["reason"] == "bad_key"} >= {
        "member 'sa_\\udcff12.jpg'", "member 'sa_13.v2.json'"}
    before, after = check_written(tmp_path / "ref", ref), check_written(tmp_path / "out", got)
    assert sorted(after) == sorted(set(stems) - {"sa_9"})
    for stem in after:
        ref_lines = before[stem]["txt"].decode().splitlines()
        ref_info, info = json.loads(before[stem]["json"]), json.loads(after[stem]["json"])
        dropped = 0 if stem in ("sa_10", "sa_11") else 1  # the broken annotation 0, only it
        assert after[stem]["txt"].decode().splitlines() == ref_lines[dropped:], stem
        assert info["instances"] == ref_info["instances"][dropped:], stem
        assert after[stem]["jpg"] == before[stem]["jpg"]
    assert extra.exists()


# --- 5. corrupt JPEGs ---------------------------------------------------------------------------
def test_corrupt_jpeg_is_detected_where_opencv_fills_grey(tmp_path):
    jpg, record = pair(1, hw=(240, 320), objects=3)
    broken = garbage_in_the_middle(jpg)
    cut_with_end = jpg[:len(jpg) // 2] + b"\xff\xd9"
    for data in (broken, cut_with_end):
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
        with pytest.raises(ImageReadError, match="x.jpg: corrupt JPEG") as err:
            decode_image(data, 10**6, name="x.jpg")
        assert err.value.reason == "corrupt_image"
        assert decode_image(data, 10**6, corrupt="warn").shape == (240, 320, 3)  # predict/eval
    (tmp_path / "in").mkdir()
    good = write_tar(tmp_path / "in" / "sa_000000.tar", members_of({"sa_4": pair(4)}))
    first = convert([tmp_path / "in"], tmp_path / "out")
    before = digest(tmp_path / "out" / "train")
    members = members_of({"sa_1": (broken, record), "sa_2": (cut_with_end, record),
                          "sa_3": pair(3)})
    write_tar(tmp_path / "in" / "sa_000001.tar", members)  # added to an existing output
    manifest = convert([tmp_path / "in"], tmp_path / "out")
    assert first["samples"]["train"] == 1 and manifest["complete"]
    assert manifest["skipped_by_reason"] == {"corrupt_image": 2}
    assert sorted(check_written(tmp_path / "out", manifest)) == ["sa_3", "sa_4"]
    after = digest(tmp_path / "out" / "train")
    assert {k: after[k] for k in before} == before and good.exists()  # earlier shards intact


# --- 6. pixel limit -----------------------------------------------------------------------------
def test_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch):
    bomb = huge_jpeg()
    assert len(bomb) < 1000

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image over the pixel limit was decoded")

    monkeypatch.setattr(image_io.simplejpeg, "decode_jpeg", no_decoding)
    with pytest.raises(ImageReadError, match="20000x20000 = 400.0 MP is above the limit of 50 MP"):
        decode_image(bomb, 50_000_000, name="bomb.jpg")
    record = {"image": {"image_id": 1, "width": 20000, "height": 20000}, "annotations": []}
    members = members_of({"sa_1": (bomb, record)})
    manifest = convert([write_tar(tmp_path / "a.tar", members)], tmp_path / "out")
    assert manifest["skipped_by_reason"] == {"too_many_pixels": 1}
    assert manifest["skipped"][0]["id"] == "sa_1"
    monkeypatch.undo()
    small = convert([write_tar(tmp_path / "b.tar", members_of({"sa_2": pair(2)}))],
                    tmp_path / "out2", max_pixels=1000)  # a configured limit applies too
    assert small["skipped_by_reason"] == {"too_many_pixels": 1}


def test_pixel_limit_in_predict_and_eval(tmp_path, capsys):
    (tmp_path / "bomb.jpg").write_bytes(huge_jpeg())
    out = tmp_path / "out"
    code = cli_main(["predict", str(tmp_path / "bomb.jpg"), "--weights", str(tmp_path / "w.pt"),
                     "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "bomb.jpg" in err and "max_pixels" in err
    cv2.imwrite(str(tmp_path / "small.jpg"), np.full((40, 50, 3), 128, np.uint8))
    assert cli_main(["predict", str(tmp_path / "small.jpg"), "--weights", "w.pt",
                     "--max-pixels", "1000", "--out", str(out)]) == 2
    assert "small.jpg: 50x40" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ImageReadError, match="bomb.jpg.*max_pixels"):
        read_rgb(tmp_path / "bomb.jpg", {"id": 1, "height": 20000, "width": 20000},
                 max_pixels=50_000_000)
    never = Predictor(lambda x: pytest.fail("the network ran"), PredictOptions(max_pixels=1000))
    with pytest.raises(ImageReadError, match="max_pixels"):
        never.everything(np.zeros((300, 400, 3), np.uint8))


# --- 7. NaN / inf prompts -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ultra.validate_model_config({"arch": "yolov8-seg", "scale": "n", "nc": 1,
                                          "reg_max": 26})
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    return save_weights(Weights(config, ultra.build_model("n").state_dict(), "test"), path,
                        half=True)


@pytest.mark.parametrize("prompt", [
    ["--boxes=nan,nan,nan,nan"], ["--boxes=0,0,inf,inf"], ["--boxes=-inf,0,5,5"],
    ["--points", "nan,5"], ["--points", "5,5", "3,inf", "--labels", "1", "0"]])
def test_nonfinite_prompts_exit_2_before_anything_is_written(tmp_path, capsys, tiny_weights,
                                                           prompt):
    cv2.imwrite(str(tmp_path / "im.jpg"), np.full((48, 64, 3), 128, np.uint8))
    out = tmp_path / "out"
    code = cli_main(["predict", str(tmp_path / "im.jpg"), "--weights", str(tiny_weights),
                     "--imgsz", "64", "--no-overlay", "--out", str(out), *prompt])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "im.jpg" in err and "not a finite number" in err
    assert not out.exists()


def test_nonfinite_prompts_in_the_python_api():
    masks = torch.zeros((2, 40, 50), dtype=torch.bool)
    masks[0, :10, :10] = True
    masks[1] = True  # the whole image
    seg = Segmentation(torch.tensor([[0.0, 0, 10, 10], [0, 0, 50, 40]]), torch.tensor([0.9, 0.8]),
                       (40, 50), masks=masks)
    predictor = Predictor(lambda x: pytest.fail("the network ran"))
    nan, inf = float("nan"), float("inf")
    for box in ([nan, nan, nan, nan], [0, 0, inf, inf], [0, nan, 20, 20]):
        with pytest.raises(PromptError, match="not a finite number"):
            predictor.boxes(seg, [box])
    for points in ([[nan, 3]], [[3, 3], [inf, 1]]):
        with pytest.raises(PromptError, match="not a finite number"):
            predictor.points(seg, points, [1] * len(points))
    # a huge but finite box covers the image: clipped before the integer conversion
    assert torch.equal(predictor.boxes(seg, [[0, 0, 1e30, 1e30]]).masks[0], masks[1])


# --- 9. pairing and keys ------------------------------------------------------------------------
def test_pairs_only_within_one_folder_and_keys_stay_unique(tmp_path):
    (j1, r1), (j2, r2), (j3, r3), (j4, r4), (j6, r6) = (pair(i) for i in (1, 2, 3, 4, 6))
    other = {**r4, "image": {**r4["image"], "image_id": 44}}
    dump = json.dumps
    members = [("a/sa_1.jpg", j1), ("b/sa_1.json", dump(r1).encode()),  # other folder: no pair
               ("a/sa_2.jpg", j2), ("a/sa_2.json", dump(r2).encode()),
               ("./sa_3.jpg", j3), ("sa_3.json", dump(r3).encode()),  # same folder, two spellings
               ("a/sa_4.jpg", j4), ("a/sa_4.json", dump(r4).encode()),
               ("b/sa_4.jpg", j4), ("b/sa_4.json", dump(other).encode()),  # key again
               ("sa_6.jpg", j6), ("sa_6.json", dump(r6).encode()),
               ("sa_6.jpg", j6), ("sa_6.json", dump(r6).encode())]  # the same member twice
    tar = tmp_path / "sa_000000.tar"
    with tarfile.open(tar, "w") as handle:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    folder = tmp_path / "extracted"
    folder.mkdir()
    (folder / "sa_7.jpg").write_bytes(pair(7)[0])
    (folder / "sa_7.json").write_text(dump(pair(7)[1]))
    (folder / "sa_8.v2.jpg").write_bytes(pair(8)[0])  # a dot: webdataset would cut the key
    (folder / "sa_8.v2.json").write_text(dump(pair(8)[1]))
    manifest = convert([tar, folder], tmp_path / "out")
    assert manifest["skipped_by_reason"] == {"missing_json": 1, "missing_image": 1,
                                             "duplicate_key": 2, "bad_key": 1}
    written = check_written(tmp_path / "out", manifest)
    assert sorted(written) == ["sa_2", "sa_3", "sa_4", "sa_6", "sa_7"]
    assert json.loads(written["sa_4"]["json"])["image_id"] == 4  # the first one is kept


# --- 10. evaluation edges -----------------------------------------------------------------------
def compose_eval(*overrides: str):
    return compose_config("eval", "model.weights=unused.pt", "progress=false", *overrides)


def small_gt(tmp_path: Path) -> tuple[dict, Path]:
    gt = box_gt([[(4, 4, 20, 16), (30, 20, 10, 12)], [(8, 8, 24, 24)]], size=64)
    gt["annotations"][1]["segmentation"] = [[30.0, 20.0, 40.0, 20.0, 40.0, 32.0, 30.0, 32.0]]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return gt, path


def test_malformed_or_empty_annotation_file_is_one_error_naming_it(tmp_path):
    gt, good = small_gt(tmp_path)
    bad = tmp_path / "broken.json"
    bad.write_text(good.read_text()[:-40])
    with pytest.raises(ValueError, match=f"{bad}: not a valid JSON file"):
        load_gt(bad)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**gt, "annotations": []}))
    with pytest.raises(ValueError, match=f"{empty}: no annotations"):
        load_gt(empty)
    for field, value, message in [("bbox", [1, 2, 3], "bbox"), ("area", "12", "area"),
                                  ("image_id", 99, "image_id 99"), ("category_id", None,
                                                                    "category_id")]:
        broken = {**gt, "annotations": [{**gt["annotations"][0], field: value}]}
        (tmp_path / "f.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"f.json: annotations\\[0\\].*{message}"):
            load_gt(tmp_path / "f.json")
    # the entry point: one line naming the file, exit 2, no report written
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval" / "run.py"), "task=coco_ar", f"task.annotation={bad}",
         f"task.image_root={tmp_path}", "model.weights=unused.pt", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"eval: error: {bad}: not a valid JSON file")
    assert not (out / "metrics.json").exists()


def saved_predictions(gt: dict, ids: list[int], path: Path) -> Path:
    outputs = predictions(gt, extra=5, seed=1)
    writer = PredictionWriter(path)
    writer.reset()
    images = {im["id"]: im for im in gt["images"]}
    writer.process([], [to_prediction(images[i], outputs[i]) for i in ids])
    writer.evaluate()
    return path


def test_predictions_for_a_subset_need_allow_subset(tmp_path, caplog):
    gt, ann = small_gt(tmp_path)
    saved = saved_predictions(gt, [1], tmp_path / "p.jsonl.gz")
    common = ["task=coco_ar", f"task.annotation={ann}", f"task.image_root={tmp_path}",
              f"predictions={saved}"]
    with pytest.raises(ValueError, match="p.jsonl.gz has predictions for 1 of the 2 images"):
        eval_run.run(compose_eval(*common, f"paths.output_dir={tmp_path / 'a'}"))
    assert not (tmp_path / "a" / "metrics.json").exists()
    metrics = eval_run.run(compose_eval(*common, f"paths.output_dir={tmp_path / 'b'}",
                                        "allow_subset=true"))
    assert metrics["images"] == 1 and 0 < metrics["box/ar_100"] <= 1
    assert "for 1 of the 2 images" in caplog.text and "missing ids: [2]" in caplog.text
    crowd = {**gt, "annotations": [{**a, "iscrowd": 1} for a in gt["annotations"]]}
    (tmp_path / "crowd.json").write_text(json.dumps(crowd))
    with pytest.raises(ValueError, match="non-crowd.*recall would be nan"):
        eval_run.run(compose_eval("task=coco_ar", f"task.annotation={tmp_path / 'crowd.json'}",
                                  f"task.image_root={tmp_path}", f"predictions={saved}",
                                  f"paths.output_dir={tmp_path / 'c'}"))


def test_flipped_bit_in_a_weight_is_refused_where_torch_load_takes_it(tiny_weights, tmp_path):
    from fastsam_train.infer.weights import read_weights

    data = bytearray(tiny_weights.read_bytes())
    with zipfile.ZipFile(tiny_weights) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor
    local = info.header_offset  # the local header: name and extra lengths at bytes 26..29
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + \
        int.from_bytes(data[local + 28:local + 30], "little")
    data[start + info.file_size // 2] ^= 0x10
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    plain = torch.load(bad, map_location="cpu", weights_only=True)  # no error: a silent change
    good = torch.load(tiny_weights, map_location="cpu", weights_only=True)
    assert not all(torch.equal(plain["state_dict"][k], v) for k, v in good["state_dict"].items())
    with pytest.raises(ValueError, match=f"{bad}: corrupt checkpoint: .* CRC-32"):
        read_weights(bad)


def test_convert_entry_point_bad_path_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "data_tools" / "convert_sa1b.py"),
         f"input=[{tmp_path / 'nope'}]", f"output={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"convert: error: SA-1B input not found: {tmp_path / 'nope'}"]


# --- fuzz: byte flips and truncations of valid files --------------------------------------------
FLIPS, CUTS = 24, 12  # cases per target (seeded); each target runs in a few seconds


def mutations(data: bytes, seed: int, regions: list[tuple[int, int]] = ()):
    """Seeded (label, bytes, first changed offset, changed offsets): ``FLIPS`` cases of 1-4 bit
    flips (every other one inside a random region, e.g. a member's data) and ``CUTS``
    truncations (every offset from the cut on counts as changed)."""
    rng = random.Random(seed)
    for case in range(FLIPS):
        buf, where = bytearray(data), []
        for _ in range(rng.randint(1, 4)):
            start, end = rng.choice(regions) if regions and case % 2 else (0, len(data))
            where.append(rng.randrange(start, end))
            buf[where[-1]] ^= 1 << rng.randrange(8)
        yield f"flip{case}", bytes(buf), where
    for case in range(CUTS):
        cut = rng.randrange(1, len(data))
        yield f"cut{case}", data[:cut], list(range(cut, len(data)))


def clear_error(exc: BaseException, names: tuple[str, ...] = ()) -> bool:
    """A deliberate error of ours: a ValueError / FileNotFoundError raised by project code
    (not from deep inside a library), naming one of ``names`` when given."""
    origin = traceback.extract_tb(exc.__traceback__)[-1].filename
    ours = origin.startswith(str(REPO)) and "/tests/" not in origin
    return (isinstance(exc, ValueError | FileNotFoundError) and ours
            and (not names or any(n in str(exc) for n in names)))


def untouched(where: list[int], spans: list[tuple[int, int]]) -> bool:
    return not any(start <= i < end for i in where for start, end in spans)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A valid SA-1B tar of 3 images, its conversion and the shard it wrote."""
    root = tmp_path_factory.mktemp("fuzzref")
    (root / "in").mkdir()
    tar = write_tar(root / "in" / "sa_000000.tar",
                    members_of({f"sa_{i}": pair(i, (48, 64), 3) for i in (1, 2, 3)}))
    manifest = convert([tar], root / "out")
    written = check_written(root / "out", manifest)
    assert len(written) == 3
    return tar, written, next((root / "out" / "train").glob("*.tar"))


def member_spans(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of each stem's member data (and headers) in a tar."""
    spans: dict[str, list[tuple[int, int]]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            spans.setdefault(m.name.split(".")[0], []).append((m.offset, m.offset_data + m.size))
    return spans


@pytest.mark.timeout(120)
def test_fuzz_sa1b_tar_gives_skips_never_crashes_or_damage(reference, tmp_path):
    tar, ref, _ = reference
    data, spans = tar.read_bytes(), member_spans(tar)
    regions = [span for stem in spans.values() for span in stem]
    tally = Counter()
    for label, mutated, where in mutations(data, seed=13, regions=regions):
        case = tmp_path / label
        (case / "in").mkdir(parents=True)
        (case / "in" / "sa_000000.tar").write_bytes(mutated)
        manifest = convert([case / "in"], case / "out")  # any exception fails the test
        written = check_written(case / "out", manifest)
        skipped = {s["id"] for s in manifest["skipped"]}
        source_error = {"truncated_tar", "not_a_tar"} & set(manifest["skipped_by_reason"])
        for stem in ref:
            if untouched(where, spans[stem]) and not source_error:
                assert stem in written, f"{label}: untouched {stem} lost"
            if stem in written and untouched(where, spans[stem]):
                assert written[stem] == ref[stem], f"{label}: untouched {stem} changed"
            elif stem in written:
                tally["touched, written" if written[stem] == ref[stem] else "changed"] += 1
            else:
                assert stem in skipped or source_error, f"{label}: {stem} vanished uncounted"
                tally["skipped"] += 1
    print("sa1b tar fuzz outcomes per image:", dict(tally))
    assert tally["skipped"] > 0


@pytest.mark.timeout(120)
def test_fuzz_shard_reader_skips_or_fails_clearly(reference, tmp_path):
    from fastsam_train.train.datamodule import ShardDataModule

    _, ref, shard = reference
    data, spans, tally = shard.read_bytes(), member_spans(shard), Counter()
    for label, mutated, where in mutations(data, seed=17):
        case = tmp_path / label
        for split, content in (("train", data), ("val", mutated)):
            (case / split).mkdir(parents=True)
            (case / split / shard.name).write_bytes(content)
            (case / split / "sizes.json").write_text(json.dumps({shard.name: len(ref)}))
        module = ShardDataModule(str(case), imgsz=64, batch_size=1, num_workers=0)
        module.setup("fit")
        count = 0
        try:
            for batch in module.val_dataloader():
                assert batch["img"].shape == (1, 3, 64, 64)
                assert torch.isfinite(batch["bboxes"]).all()
                key = Path(batch["im_file"][0]).name
                tally["changed sample read"] += not untouched(where, spans[key])
                count += 1
        except Exception as exc:  # noqa: BLE001 - classified below
            assert clear_error(exc), f"{label}: {type(exc).__name__}: {exc}"
            tally["clear error"] += 1
        assert count <= len(ref)
        tally[f"{count} of {len(ref)} read"] += 1
    print("shard fuzz outcomes:", dict(tally))


def read_or_refuse(cases, folder: Path, suffix: str, read, tally: Counter, refused: str):
    """Each mutated case written to ``folder/<label><suffix>`` and ``read``; yields (label,
    what was read). A case ``read`` refuses must raise a clear error naming the file (counted
    in ``tally[refused]``)."""
    for label, mutated, _where in cases:
        path = folder / f"{label}{suffix}"
        path.write_bytes(mutated)
        try:
            got = read(path)
        except Exception as exc:  # noqa: BLE001 - classified here
            assert clear_error(exc, (str(path),)), f"{label}: {type(exc).__name__}: {exc}"
            tally[refused] += 1
            continue
        yield label, got


@pytest.mark.timeout(120)
def test_fuzz_checkpoint_loads_identically_or_fails_clearly(tiny_weights, tmp_path):
    from fastsam_train.infer.weights import read_weights

    data, ref, tally = tiny_weights.read_bytes(), read_weights(tiny_weights), Counter()
    cases = mutations(data, seed=19)
    for label, got in read_or_refuse(cases, tmp_path, ".pt", read_weights, tally, "clear error"):
        assert got.config == ref.config and got.state_dict.keys() == ref.state_dict.keys()
        assert all(torch.equal(got.state_dict[k], v) for k, v in ref.state_dict.items()), label
        tally["identical"] += 1
    print("checkpoint fuzz outcomes:", dict(tally))
    assert tally["clear error"] > 0


ODD_VALUES = (None, "x", -1, 0, 10**30, 1e308, float("nan"), True, [], {}, [1, 2, 3],
              {"size": [1, 1], "counts": "x"})


def json_mutations(obj, seed: int, count: int = FLIPS):
    """Seeded structural mutations: one value somewhere in ``obj`` replaced by an odd one
    (wrong type, out of range, NaN, empty), or one key dropped; as (label, bytes, [])."""
    rng = random.Random(seed)
    for case in range(count):
        node = doc = json.loads(json.dumps(obj))
        while True:  # walk down from the root; stop at a leaf or by chance
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            child = node[key]
            if not isinstance(child, dict | list) or not child or rng.random() < 0.2:
                break
            node = child
        if isinstance(node, dict) and rng.random() < 0.3:
            del node[key]
        else:
            node[key] = rng.choice(ODD_VALUES)
        yield f"json{case}", json.dumps(doc).encode(), []


@pytest.mark.timeout(120)
def test_fuzz_coco_json_is_refused_clearly_or_evaluates(tmp_path):
    gt, path = small_gt(tmp_path)
    outputs = predictions(gt, extra=5, seed=3)
    data, tally = path.read_bytes(), Counter()
    cases = [*mutations(data, seed=23), *json_mutations(gt, seed=29)]
    for label, loaded in read_or_refuse(cases, tmp_path, ".json", load_gt, tally, "refused"):
        try:
            stream = [(im, to_prediction(im, outputs[im["id"]])) for im in loaded["images"]
                      if im["id"] in outputs]
            metrics = evaluate_stream(stream, [ProposalEvaluator(loaded)], progress=False)
        except Exception as exc:  # noqa: BLE001 - classified below
            assert clear_error(exc), f"{label}: {type(exc).__name__}: {exc}"
            tally["scoring refused"] += 1
            continue
        ars = [v for k, v in metrics.items() if k.split("/")[-1] in ("ar_10", "ar_100", "ar_1000")]
        assert ars and all(np.isfinite(ars)), f"{label}: {metrics}"  # size ranges may be empty
        tally["evaluated"] += 1
    print("coco json fuzz outcomes:", dict(tally))
    assert tally["refused"] > 0
