"""The streaming pipeline: sizes, equal batches per rank, seeded order, resume skip, bad data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastsam_train import ultra
from fastsam_train.data.shards import ShardWriter, iter_shard
from fastsam_train.train import stream
from fastsam_train.train.stream import ShardStream, StreamConfig, read_split


def make_stream(shards, train=True, batches=None, batch=2, **kw) -> ShardStream:
    return ShardStream(StreamConfig(shards, imgsz=96, hyp=ultra.hyperparameters(), train=train,
                                    seed=0, batches_per_rank=batches, batch_size=batch,
                                    shuffle_buffer=4, mosaic_buffer=4, **kw))


def keys(samples) -> list[str]:
    return [s["im_file"] for s in samples]


def test_read_split_errors(demo_shards, tmp_path):
    shards, total = read_split(demo_shards, "train")
    assert total == sum(json.loads((demo_shards / "train" / "sizes.json").read_text()).values())
    with pytest.raises(FileNotFoundError, match="no train shards"):
        read_split(tmp_path, "train")
    copy = tmp_path / "copy"
    shutil.copytree(demo_shards, copy)
    shards[0].name and (copy / "train" / shards[0].name).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        read_split(copy, "train")


def equal_shards(demo_shards, folder, count=4, per_shard=3):
    """``count`` shards of ``per_shard`` samples with distinct keys, re-keyed demo samples."""
    shards, _ = read_split(demo_shards, "train")
    pool = [s for shard in shards for s in iter_shard(shard)]
    paths = []
    for i in range(count):
        writer = ShardWriter(folder / f"eq{i}", samples_per_shard=per_shard)
        for j in range(per_shard):
            writer.write({**pool[(i * per_shard + j) % len(pool)], "__key__": f"k{i}_{j}"})
        writer.close()
        paths.append(folder / f"eq{i}-000000.tar")
    return paths


def test_equal_batches_per_rank_and_disjoint_shards(demo_shards, tmp_path, monkeypatch):
    shards = equal_shards(demo_shards, tmp_path)
    seen = {}
    for rank in range(2):
        monkeypatch.setattr(stream, "_dist_info", lambda r=rank: (r, 2))
        got = []
        for worker in range(2):
            monkeypatch.setattr(stream, "_worker_info", lambda w=worker: (w, 2))
            got += keys(make_stream(shards, batches=2, batch=3))
        seen[rank] = got
    assert len(seen[0]) == len(seen[1]) == 6
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {f"k{i}_{j}" for i in range(4) for j in range(3)}


def test_uneven_shards_still_give_equal_batches(demo_shards, monkeypatch):
    shards, total = read_split(demo_shards, "train")
    for rank in range(2):
        monkeypatch.setattr(stream, "_dist_info", lambda r=rank: (r, 2))
        count = 0
        for worker in range(2):
            monkeypatch.setattr(stream, "_worker_info", lambda w=worker: (w, 2))
            count += len(keys(make_stream(shards, batches=total // 4 + 1)))
        assert count == (total // 4 + 1) * 2  # more than a pass: consumers start over


def test_order_is_seeded_per_epoch(demo_shards):
    shards, total = read_split(demo_shards, "train")
    s = make_stream(shards, batches=total // 2)
    first, again = keys(s), keys(s)
    s.configure_epoch(1)
    assert first == again and keys(s) != first and sorted(keys(s)) == sorted(first)


def test_resume_skips_the_trained_batches(demo_shards):
    shards, total = read_split(demo_shards, "train")
    s = make_stream(shards, batches=total // 2)
    full = keys(s)
    s.configure_epoch(0, skip_batches=2)
    assert keys(s) == full[4:]


def test_bad_samples_are_skipped_and_counted(demo_shards, tmp_path):
    shards, _ = read_split(demo_shards, "train")
    good = list(iter_shard(shards[0]))
    writer = ShardWriter(tmp_path / "bad", samples_per_shard=10)
    writer.write({**good[0], "__key__": "broken_jpg", "jpg": good[0]["jpg"][:50]})
    writer.write({**good[1], "__key__": "broken_txt", "txt": b"0 0.1 nan 0.3\n"})
    for sample in good:
        writer.write(sample)
    writer.close()
    out = list(make_stream([tmp_path / "bad-000000.tar"], train=False))
    assert keys(out) == [s["__key__"] for s in good]
    assert out[-1]["skipped"] == 2


def test_val_stream_is_letterboxed_and_collates(demo_shards):
    shards, total = read_split(demo_shards, "val")
    samples = list(make_stream(shards, train=False))
    assert len(samples) == total
    batch = ultra.collate(samples[:2])
    assert tuple(batch["img"].shape) == (2, 3, 96, 96)
    assert batch["bboxes"].shape[0] == batch["batch_idx"].shape[0] > 0
    assert np.all((batch["bboxes"].numpy() >= 0) & (batch["bboxes"].numpy() <= 1))
