"""The streaming pipeline: sizes and URLs, equal batches per rank, seeded order, resume skip,
bad data counted (and all-bad data stopped), labels checked as ultralytics checks them."""

from __future__ import annotations

import json
import shutil
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from fastsam_train import ultra
from fastsam_train.data.labels import LabelError, read_label
from fastsam_train.data.shards import ShardWriter, iter_shard
from fastsam_train.train import stream
from fastsam_train.train.shardlist import resolve_split
from fastsam_train.train.stream import (
    NoUsableSamples,
    ShardStream,
    StopRequested,
    StreamConfig,
)


def make_stream(shards, train=True, batches=None, batch=2, stop=None, **kw) -> ShardStream:
    return ShardStream(StreamConfig([str(s) for s in shards], imgsz=96,
                                    hyp=ultra.hyperparameters(), train=train, seed=0,
                                    batches_per_rank=batches, batch_size=batch,
                                    shuffle_buffer=4, mosaic_buffer=4, **kw), stop=stop)


def keys(samples) -> list[str]:
    return [s["im_file"] for s in samples]


def test_resolve_split_local_errors(demo_shards, tmp_path):
    shards, total = resolve_split(str(demo_shards), "train")
    assert total == sum(json.loads((demo_shards / "train" / "sizes.json").read_text()).values())
    with pytest.raises(FileNotFoundError, match="no train shards"):
        resolve_split(str(tmp_path), "train")
    copy = tmp_path / "copy"
    shutil.copytree(demo_shards, copy)
    (copy / "train" / Path(shards[0]).name).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_split(str(copy), "train")
    (copy / "val" / "sizes.json").write_text(json.dumps({"../../etc/x.tar": 3}))
    with pytest.raises(ValueError, match="plain file name"):
        resolve_split(str(copy), "val")
    (copy / "val" / "sizes.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no samples"):
        resolve_split(str(copy), "val")


def test_resolve_split_url_lists(demo_shards):
    folder = demo_shards / "train"
    sizes = json.loads((folder / "sizes.json").read_text())
    names = sorted(sizes)
    stems = ",".join(n.removesuffix(".tar") for n in names[:2])
    urls, total = resolve_split({"train": f"{folder}/{{{stems}}}.tar"}, "train")
    assert urls == [str(folder / n) for n in names[:2]]
    assert total == sizes[names[0]] + sizes[names[1]]  # sizes.json beside them
    pipe = f"pipe:cat {folder}/{{{stems}}}.tar"
    with pytest.raises(ValueError, match="data.train_size"):
        resolve_split({"train": pipe}, "train")
    assert resolve_split({"train": pipe}, "train", size=5) == (
        [f"pipe:cat {folder / n}" for n in names[:2]], 5)
    with pytest.raises(ValueError, match="one per split"):
        resolve_split(pipe, "train")


def test_plain_webdataset_reads_our_shards(demo_shards):
    shards, total = resolve_split(str(demo_shards), "train")
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == total
    for sample in samples:
        assert {"jpg", "txt", "json"} <= set(sample)
        assert json.loads(sample["json"])["instances"]
        assert len(read_label(sample["txt"].decode())) == len(json.loads(sample["json"])
                                                              ["instances"])


def test_writer_is_reproducible_and_atomic(tmp_path):
    """webdataset's TarWriter with fixed headers: same bytes at another time; members are
    mode 0444, mtime 0, no owner; nothing but finished shards under their final names."""
    def write(folder: Path) -> bytes:
        writer = ShardWriter(folder / "s", samples_per_shard=2)
        for i in range(3):
            writer.write({"__key__": f"k{i}", "jpg": bytes([i]) * 10, "txt": b"0 0 0 1 0 1 1\n",
                          "json": b"{}"})
            if i == 0:
                assert not list(folder.glob("s-*.tar"))  # still in its temp file
        writer.close()
        assert writer.written == [("s-000000.tar", 2), ("s-000001.tar", 1)]
        assert sorted(p.name for p in folder.iterdir()) == ["s-000000.tar", "s-000001.tar"]
        return b"".join((folder / n).read_bytes() for n, _ in writer.written)
    first = write(tmp_path / "a")
    time.sleep(1.1)
    assert write(tmp_path / "b") == first
    with tarfile.open(tmp_path / "a" / "s-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["k0.jpg", "k0.json", "k0.txt", "k1.jpg", "k1.json",
                                         "k1.txt"]
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members} == \
        {(0, 0o444, 0, 0, "", "")}


def equal_shards(demo_shards, folder, count=4, per_shard=3):
    """``count`` shards of ``per_shard`` samples with distinct keys, re-keyed demo samples."""
    shards, _ = resolve_split(str(demo_shards), "train")
    pool = [s for shard in shards for s in iter_shard(shard)]
    paths = []
    for i in range(count):
        writer = ShardWriter(folder / f"eq{i}", samples_per_shard=per_shard)
        for j in range(per_shard):
            writer.write({**pool[(i * per_shard + j) % len(pool)], "__key__": f"k{i}_{j}"})
        writer.close()
        paths.append(folder / f"eq{i}-000000.tar")
    return paths


def keys_per_rank(monkeypatch, make, world: int = 2, workers: int = 2) -> dict[int, list]:
    """The sample keys each of ``world`` ranks reads, over its ``workers`` data-loader workers
    (each a fresh ``make()`` stream, as every worker process builds its own)."""
    seen = {}
    for rank in range(world):
        monkeypatch.setattr(stream, "_dist_info", lambda r=rank: (r, world))
        got = []
        for worker in range(workers):
            monkeypatch.setattr(stream, "_worker_info", lambda w=worker: (w, workers))
            got += keys(make())
        seen[rank] = got
    return seen


@pytest.mark.parametrize("count", [4, 2, 1])  # shards: = consumers, = ranks, < ranks
def test_equal_batches_per_rank_and_disjoint_samples(demo_shards, tmp_path, monkeypatch, count):
    shards = equal_shards(demo_shards, tmp_path, count=count, per_shard=12 // count)
    seen = keys_per_rank(monkeypatch, lambda: make_stream(shards, batches=2, batch=3))
    assert len(seen[0]) == len(seen[1]) == 6
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 12


def test_uneven_shards_still_give_equal_batches(demo_shards, monkeypatch):
    shards, total = resolve_split(str(demo_shards), "train")
    seen = keys_per_rank(monkeypatch, lambda: make_stream(shards, batches=total // 4 + 1))
    for got in seen.values():
        assert len(got) == (total // 4 + 1) * 2  # more than a pass: consumers start over


def test_validation_gives_every_rank_the_same_samples_count(demo_shards, monkeypatch):
    """Validation over uneven shards (3, 3, 1 samples ...): every rank (and its workers) gets
    total // world distinct samples, so no rank waits for another in a collective."""
    shards, total = resolve_split(str(demo_shards), "train")  # read as a validation stream
    sizes = [len(list(iter_shard(s))) for s in shards]
    assert len(set(sizes)) > 1 and total % 2 == 0, sizes  # the uneven case this is about
    seen = keys_per_rank(monkeypatch,
                         lambda: make_stream(shards, train=False, max_samples=total // 2))
    assert len(seen[0]) == len(seen[1]) == total // 2
    assert not set(seen[0]) & set(seen[1])


def test_order_is_seeded_per_epoch(demo_shards):
    shards, total = resolve_split(str(demo_shards), "train")
    s = make_stream(shards, batches=total // 2)
    first, again = keys(s), keys(s)
    s.configure_epoch(1)
    assert first == again and keys(s) != first and sorted(keys(s)) == sorted(first)


def test_resume_skips_the_trained_batches(demo_shards):
    shards, total = resolve_split(str(demo_shards), "train")
    s = make_stream(shards, batches=total // 2)
    full = keys(s)
    s.configure_epoch(0, skip_batches=2)
    assert keys(s) == full[4:]


def test_pipe_urls_stream_the_same_samples(demo_shards):
    shards, total = resolve_split(str(demo_shards), "val")
    pipes = [f"pipe:cat {s}" for s in shards]
    assert keys(make_stream(pipes, train=False)) == keys(make_stream(shards, train=False))


def write_shard(path: Path, samples: list[dict]) -> Path:
    writer = ShardWriter(path.with_name(path.name.removesuffix("-000000.tar")), 10**6)
    for sample in samples:
        writer.write(sample)
    writer.close()
    return path


def test_bad_samples_are_skipped_and_counted(demo_shards, tmp_path):
    shards, _ = resolve_split(str(demo_shards), "train")
    good = list(iter_shard(shards[0]))
    bad = [{**good[0], "__key__": "broken_jpg", "jpg": good[0]["jpg"][:50]},
           {**good[1], "__key__": "broken_txt", "txt": b"0 0.1 nan 0.3 0.2 0.4 0.5\n"},
           {**good[1], "__key__": "out_of_range", "txt": b"0 -3 0.5 4 0.5 0.5 0.9\n"},
           {**good[1], "__key__": "huge", "txt": b"0 0.1 0.1 1e30 0.2 0.5 0.9\n"},
           {"__key__": "no_label", "jpg": good[0]["jpg"]}]
    write_shard(tmp_path / "bad-000000.tar", bad + good)
    (tmp_path / "garbage-000000.tar").write_bytes(np.random.default_rng(0).bytes(5000))
    out = list(make_stream([tmp_path / "garbage-000000.tar", tmp_path / "bad-000000.tar"],
                           train=False))
    assert keys(out) == [s["__key__"] for s in good]
    assert out[-1]["skipped"] == 6  # 5 samples + 1 unreadable tar


LABELS = {  # label text; ultralytics checks the polygons' xywh boxes, not the vertices
    "in_range": "0 0.1 0.1 0.9 0.1 0.5 0.9",
    "box_within_1pct": "0 0.0 0.0 1.009 0.0 0.5 1.005",
    "vertex_past_1_box_inside": "0 0.1 0.1 1.02 0.1 0.5 0.9",  # xc 0.56, w 0.92: kept
    "vertex_negative_box_inside": "0 -0.5 0.2 0.5 0.2 0.0 0.6",  # xc 0, w 1: kept
    "box_centre_below_0": "0 -0.5 0.2 0.4 0.2 0.0 0.6",  # xc -0.05: refused
    "box_past_1pct": "0 0.5 0.1 1.6 0.1 1.0 0.9",  # xc 1.05: refused
    "minus_3_to_4": "0 -3 0.5 4 0.5 0.5 0.9",
    "huge": "0 0.1 0.1 1e30 0.2 0.5 0.9",
    "negative": "0 -0.2 -0.3 -0.1 -0.3 -0.15 -0.1",
    "nan": "0 0.1 nan 0.3 0.2 0.4 0.5",
    "class_1": "1 0.1 0.1 0.9 0.1 0.5 0.9",
    "class_half": "0.5 0.1 0.1 0.9 0.1 0.5 0.9",
    "duplicate": "0 0.1 0.1 0.9 0.1 0.5 0.9\n0 0.1 0.1 0.9 0.1 0.5 0.9\n0 0.2 0.2 0.8 0.2 0.5 0.7",
}


def ultralytics_verdict(text: str, tmp_path: Path, image: Path) -> int | None:
    """ultralytics' own check: instances kept, or None if it drops the image as corrupt."""
    from ultralytics.data.utils import verify_image_label

    label = tmp_path / "label.txt"
    label.write_text(text + "\n")
    out = verify_image_label((str(image), str(label), "", False, 1, 0, 0, False))
    return None if out[0] is None else len(out[3])


def test_labels_are_checked_like_ultralytics(tmp_path):
    """read_label keeps / rejects every crafted label exactly as ultralytics 8.4's
    verify_image_label (the reference, on the same text) does."""
    import cv2

    image = tmp_path / "im.jpg"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    for name, text in LABELS.items():
        reference = ultralytics_verdict(text, tmp_path, image)
        try:
            ours = len(read_label(text))
        except LabelError:
            ours = None
        assert ours == reference, (name, ours, reference)
    assert ultralytics_verdict(LABELS["minus_3_to_4"], tmp_path, image) is None  # not vacuous
    with pytest.raises(LabelError, match="label_out_of_range"):
        read_label(LABELS["huge"])


def run_with_timeout(fn, seconds: float):
    """``fn()`` in a daemon thread; its result or exception, or a failure after ``seconds``."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def all_bad_shards(demo_shards, folder: Path, kind: str) -> list[Path]:
    shards, _ = resolve_split(str(demo_shards), "train")
    paths = []
    for i, shard in enumerate(shards[:2]):
        path = folder / f"{kind}{i}-000000.tar"
        if kind == "nan":
            write_shard(path, [{**s, "txt": b"0 nan nan nan nan nan nan\n"}
                               for s in iter_shard(shard)])
        else:
            path.write_bytes(np.random.default_rng(i).bytes(3000))
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["nan", "garbage"])
def test_all_bad_training_data_stops_with_one_error(demo_shards, tmp_path, kind):
    shards = all_bad_shards(demo_shards, tmp_path, kind)
    s = make_stream(shards, batches=1000, max_consecutive_skips=50)
    with pytest.raises(NoUsableSamples, match="no usable sample in the last 50 tries") as info:
        run_with_timeout(lambda: keys(s), 60)
    reason = "label_not_finite" if kind == "nan" else "unreadable_tar"
    assert reason in str(info.value) and "skipped in total" in str(info.value)


def test_stop_event_ends_a_run_of_skips(demo_shards, tmp_path):
    import multiprocessing as mp

    stop = mp.Event()
    stop.set()
    s = make_stream(all_bad_shards(demo_shards, tmp_path, "nan"), batches=1000, stop=stop,
                    max_consecutive_skips=10**9)
    with pytest.raises(StopRequested, match="trainer is stopping"):
        run_with_timeout(lambda: keys(s), 60)


def test_val_stream_is_letterboxed_and_collates(demo_shards):
    shards, total = resolve_split(str(demo_shards), "val")
    samples = list(make_stream(shards, train=False))
    assert len(samples) == total
    batch = ultra.collate(samples[:2])
    assert tuple(batch["img"].shape) == (2, 3, 96, 96)
    assert batch["bboxes"].shape[0] == batch["batch_idx"].shape[0] > 0
    assert np.all((batch["bboxes"].numpy() >= 0) & (batch["bboxes"].numpy() <= 1))


def test_http_brace_list_streams_the_same_samples(demo_shards, http_folder):
    """Shards behind HTTP (curl, as webdataset opens http URLs), named by a brace list; the
    size comes from the sizes.json beside them."""
    url, requests = http_folder(demo_shards)
    local, total = resolve_split(str(demo_shards), "val")
    stems = ",".join(Path(p).stem for p in local)
    urls, size = resolve_split({"val": f"{url}/val/{{{stems}}}.tar"}, "val")
    assert size == total and len(urls) == len(local)
    assert keys(make_stream(urls, train=False)) == keys(make_stream(local, train=False))
    assert sorted(requests) == sorted(["/val/sizes.json", *(f"/val/{Path(p).name}"
                                                          for p in local)])
