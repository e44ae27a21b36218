"""Resumable evaluation: the per-image results log (format, torn records, settings check) and
interrupted runs (an exception mid-run, ``kill -9`` of the process) that resume to exactly the
metrics and predictions file of an uninterrupted run."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import fake_run, synthetic_gt, write_images

from eval.resume import FRAME, MAGIC, CorruptLogError, ResultLog, pack, unpack

TESTS = Path(__file__).resolve().parent


def results(k: int) -> list[dict]:
    return [{"ranks": np.full((10, 4, k), k, np.int16), "counted": np.arange(4),
             "n": np.int64(k), "flag": np.array([True, False]), "x": np.zeros((0, 3))},
            {"end": np.int64(100 * k)}]


def test_records_round_trip_and_only_numbers_are_read(tmp_path):
    arrays = results(3)[0]
    back = unpack(pack(arrays))
    assert back.keys() == arrays.keys()
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and back[key].shape == np.shape(value)
        np.testing.assert_array_equal(back[key], value)
    with pytest.raises(TypeError, match="numeric"):
        pack({"o": np.array([{"a": 1}], dtype=object)})
    head = json.dumps([["o", "|O", [1]]]).encode()
    with pytest.raises(ValueError, match="bad dtype"):
        unpack(struct.pack("<I", len(head)) + head + b"\0" * 8)
    with pytest.raises(ValueError, match="runs past"):
        unpack(pack({"a": np.zeros(4)})[:-1])


def written_log(tmp_path, images=5) -> Path:
    log = ResultLog(tmp_path / "log.bin", {"task": "t", "k": [1, 2]})
    for k in range(1, images + 1):
        log.append(k, results(k))
    log.close()
    return tmp_path / "log.bin"


def test_log_reopens_with_its_records(tmp_path):
    path = written_log(tmp_path)
    log = ResultLog(path, {"k": [1, 2], "task": "t"})
    assert log.image_ids == {1, 2, 3, 4, 5}
    got = list(log.records(keep={2, 4}))
    assert [i for i, _ in got] == [2, 4]
    np.testing.assert_array_equal(got[1][1][0]["ranks"], results(4)[0]["ranks"])
    assert int(got[1][1][1]["end"]) == 400
    log.append(6, results(6))
    log.close()
    assert ResultLog(path, {"k": [1, 2], "task": "t"}).image_ids == {1, 2, 3, 4, 5, 6}


@pytest.mark.parametrize("cut", [1, 5, 9, 40, -1])
def test_a_torn_last_record_is_dropped(tmp_path, cut):
    path = written_log(tmp_path)
    data = path.read_bytes()
    last = _record_offsets(data)[-1]
    path.write_bytes(data[:last + cut] if cut > 0 else data[:-1])
    log = ResultLog(path, {"task": "t", "k": [1, 2]})
    assert log.image_ids == {1, 2, 3, 4}
    log.append(5, results(5))  # continues after the cut
    log.close()
    assert path.read_bytes() == data


def _record_offsets(data: bytes) -> list[int]:
    offsets, at = [], len(MAGIC)
    while at < len(data):
        offsets.append(at)
        at += FRAME.size + FRAME.unpack_from(data, at)[0]
    return offsets[1:]  # without the header


def test_damage_before_the_end_or_other_settings_are_refused(tmp_path):
    path = written_log(tmp_path)
    data = bytearray(path.read_bytes())
    zeros = bytes(data) + b"\0" * 64  # a file system's zero-filled tail: torn, not damage
    path.write_bytes(zeros)
    assert ResultLog(path, {"task": "t", "k": [1, 2]}).image_ids == {1, 2, 3, 4, 5}
    second = _record_offsets(bytes(data))[1]
    data[second + FRAME.size + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="damaged record"):
        ResultLog(path, {"task": "t", "k": [1, 2]})
    # a length field damaged into "past the end" with megabytes behind it: not a torn write
    data = written_log(tmp_path / "c").read_bytes() + FRAME.pack(1 << 29, 0) + b"\1" * (5 << 20)
    (tmp_path / "c" / "log.bin").write_bytes(data)
    with pytest.raises(CorruptLogError, match="damaged record"):
        ResultLog(tmp_path / "c" / "log.bin", {"task": "t", "k": [1, 2]})
    path = written_log(tmp_path / "b")
    with pytest.raises(ValueError, match=r"other settings \(differences in: k\)"):
        ResultLog(path, {"task": "t", "k": [1, 3]})
    (tmp_path / "junk.bin").write_bytes(b"hello")
    with pytest.raises(CorruptLogError, match="not a per-image results log"):
        ResultLog(tmp_path / "junk.bin", {})
    assert (tmp_path / "junk.bin").read_bytes() == b"hello"  # refused, and left as it was


def test_a_second_writer_is_refused(tmp_path):
    first = ResultLog(tmp_path / "log.bin", {"a": 1})
    with pytest.raises(RuntimeError, match="open in another evaluation"):
        ResultLog(tmp_path / "log.bin", {"a": 1})
    first.append(1, results(1))
    first.close()
    assert ResultLog.logged_ids(tmp_path / "log.bin") == {1}


@pytest.fixture
def synthetic_task(tmp_path):
    """A COCO-format dataset of 12 PNG images (crowd regions, an image without objects)."""
    gt = synthetic_gt(count=12, seed=3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    write_images(gt, tmp_path / "images")

    def overrides(out: Path, task: str = "coco_ar", *extra: str) -> list[str]:
        return [f"task={task}", f"task.annotation={tmp_path / 'gt.json'}",
                f"task.image_root={tmp_path / 'images'}", f"paths.output_dir={out}",
                "model.weights=fake.pt", "progress=false", *extra]
    overrides.gt = gt
    return overrides


def lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_interrupted_run_resumes_to_the_same_metrics(synthetic_task, tmp_path):
    full, _ = fake_run(synthetic_task(tmp_path / "full"))
    out = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="interrupted at image 6"):
        fake_run(synthetic_task(out, "coco_ar", "batch_size=2"), fail_at=6)
    assert ResultLog.logged_ids(out / "per_image.bin") == {1, 2, 3, 4}
    resumed, fake = fake_run(synthetic_task(out))
    assert fake.seen == list(range(5, 13))  # images 1-4 were logged (batches of 2), 5-12 redone
    assert resumed == full
    saved = lines(out / "predictions.jsonl.gz")
    assert [row["image_id"] for row in saved] == list(range(1, 13))
    assert saved == lines(tmp_path / "full" / "predictions.jsonl.gz")
    again, fake = fake_run(synthetic_task(out))  # everything logged: nothing is predicted
    assert again == full and fake.seen == []
    rescored, _ = fake_run(synthetic_task(tmp_path / "re", "coco_ar",
                                          f"predictions={out / 'predictions.jsonl.gz'}"))
    assert rescored == full
    with pytest.raises(ValueError, match="other settings"):
        fake_run(synthetic_task(out, "coco_ar", "model.conf=0.5"))
    with pytest.raises(ValueError, match="7 images outside this run.s 5"):
        fake_run(synthetic_task(tmp_path / "full", "coco_ar", "max_images=5"))
    assert lines(tmp_path / "full" / "predictions.jsonl.gz") == saved  # nothing was cut


def test_interrupted_instance_run_resumes(synthetic_task, tmp_path):
    gt = synthetic_task.gt
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": round(0.3 + 0.05 * (k % 9), 2)}
            for k, a in enumerate(gt["annotations"]) if not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    extra = f"task.detections={tmp_path / 'dets.json'}"
    full, _ = fake_run(synthetic_task(tmp_path / "full", "coco_instance", extra))
    with pytest.raises(RuntimeError):
        fake_run(synthetic_task(tmp_path / "cut", "coco_instance", extra), fail_at=8)
    resumed, fake = fake_run(synthetic_task(tmp_path / "cut", "coco_instance", extra))
    assert fake.seen == list(range(8, 13)) and resumed == full
    # the official pool (conf 0.4) drops the low-scored masks; the proposals pool can only gain
    assert 0 < full["mask/ap"] <= full["mask_proposals/ap"] and full["mask_proposals/ap"] > 0.3


def test_kill_9_then_resume_equals_an_uninterrupted_run(synthetic_task, tmp_path):
    full, _ = fake_run(synthetic_task(tmp_path / "full"))
    out = tmp_path / "killed"
    code = ("import sys; from eval_helpers import fake_run; "
            "fake_run(sys.argv[1:], delay=0.25)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, "-c", code, *synthetic_task(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log_path, deadline = out / "per_image.bin", time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if log_path.is_file() and len(ResultLog.logged_ids(log_path)) >= 4:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    done = ResultLog.logged_ids(log_path)
    assert 4 <= len(done) < 12
    with open(out / "predictions.jsonl.gz", "ab") as f:  # as if killed while writing it
        f.write(gzip.compress(b'{"image_id": 99, "hei')[:20])
    resumed, fake = fake_run(synthetic_task(out))
    assert resumed == full and fake.seen == sorted(set(range(1, 13)) - done)
    assert lines(out / "predictions.jsonl.gz") == lines(tmp_path / "full" /
                                                        "predictions.jsonl.gz")


def test_rescoring_reads_a_torn_predictions_file_up_to_the_tear(synthetic_task, tmp_path,
                                                                 caplog):
    fake_run(synthetic_task(tmp_path / "full"))
    saved = tmp_path / "full" / "predictions.jsonl.gz"
    torn = tmp_path / "torn.jsonl.gz"
    torn.write_bytes(saved.read_bytes()[:-30])  # the last image's record cut short
    # a torn file covers only some images: an error unless a subset is asked for
    with pytest.raises(ValueError, match="has predictions for 11 of the 12 images"):
        fake_run(synthetic_task(tmp_path / "re", "coco_ar", f"predictions={torn}"))
    metrics, _ = fake_run(synthetic_task(tmp_path / "re2", "coco_ar", f"predictions={torn}",
                                         "allow_subset=true"))
    assert metrics["images"] == 11 and "torn record" in caplog.text
