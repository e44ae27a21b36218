"""Benchmark SA-1B conversion on SA-1B-like data: polygon fidelity, throughput, memory.

    python data_tools/bench/bench_convert.py            # 8 images x 100 masks at real SA-1B size
    python data_tools/bench/bench_convert.py --images 16 --masks 100

SA-1B-like: the real SA-1B photos in ../shared/data/sa1b_images when present (else synthetic
images of 1500x2250), each with ~100 masks whose relative size sqrt(area / image area) spans
~0.01-0.5 log-uniformly (SA-1B's range), including holed and multi-part masks, as COCO RLE.

Prints: mean/percentile IoU of every source mask vs its polygon rasterised back at the output
resolution (the reference is the full mask resized with INTER_AREA, >= 0.5); images/s per core
of (floor) decode+resize+encode with no masks, (naive) + per-mask full-image pycocotools decode
and findContours, (ours) the real `convert_record`; the ratios; peak RSS of worker processes in
a real 2-worker conversion; and the projected wall time for the 2% sample on a 32-core node.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from fastsam_train.data.convert import ConvertOptions, convert_dataset
from fastsam_train.data.demo import KINDS, random_shape, sa1b_record
from fastsam_train.data.inputs import SA1BInput
from fastsam_train.data.labels import parse_label
from fastsam_train.data.polygons import mask_iou, polygon_to_mask, resize_mask
from fastsam_train.data.records import (
    RecordOptions,
    convert_record,
    decode_image,
    output_size,
    resize_encode,
)
from fastsam_train.data.sa1b import RawPair

SHARED_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "sa1b_images"
SA1B_IMAGES_2PCT = 220_000


def load_images(count: int, rng: np.random.Generator) -> list[bytes]:
    real = sorted(SHARED_IMAGES.glob("sa_*.jpg")) if SHARED_IMAGES.is_dir() else []
    if real:
        print(f"images: {len(real)} real SA-1B photos from {SHARED_IMAGES} (cycled)")
        return [real[i % len(real)].read_bytes() for i in range(count)]
    print("images: synthetic 1500x2250 (../shared/data/sa1b_images not found)")
    noise = [rng.integers(0, 255, (1500, 2250, 3), dtype=np.uint8) for _ in range(count)]
    return [cv2.imencode(".jpg", cv2.GaussianBlur(n, (0, 0), 3))[1].tobytes() for n in noise]


def make_pairs(count: int, masks: int, seed: int) -> list[RawPair]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i, raw in enumerate(load_images(count, rng)):
        hw = decode_image(raw, RecordOptions().max_pixels).shape[:2]
        shapes = [random_shape(KINDS[j % len(KINDS)], rng, hw, (0.006, 0.35))
                  for j in range(masks)]
        record = sa1b_record(i + 1, hw, [m for m in shapes if m.any()], rng)
        pairs.append(RawPair(f"sa_{i + 1}", raw, json.dumps(record).encode()))
    return pairs


def fidelity(pairs: list[RawPair], opts: RecordOptions) -> np.ndarray:
    """IoU of every kept mask: polygon raster vs the source mask resized (rows: iou, area)."""
    rows = []
    for pair in pairs:
        sample = convert_record(pair, opts, Counter())
        info, meta = json.loads(sample["json"]), json.loads(pair.meta)
        anns = {a["id"]: a for a in meta["annotations"]}
        size = tuple(info["size"])
        for poly, inst in zip(parse_label(sample["txt"].decode(), size), info["instances"],
                              strict=True):
            ref = resize_mask(mask_utils.decode(anns[inst["id"]]["segmentation"]), size)
            rows.append((mask_iou(polygon_to_mask(poly, size), ref), ref.sum()))
    return np.array(rows, dtype=np.float64)


def floor_one(pair: RawPair, opts: RecordOptions) -> None:
    image = decode_image(pair.image, opts.max_pixels)
    resize_encode(image, output_size(*image.shape[:2], opts.max_side), opts.jpeg_quality)


def naive_one(pair: RawPair, opts: RecordOptions) -> None:
    """Per-mask full-image decode + findContours at source resolution, then scale."""
    image = decode_image(pair.image, opts.max_pixels)
    size = output_size(*image.shape[:2], opts.max_side)
    scale = np.array([size[1] / image.shape[1], size[0] / image.shape[0]])
    for ann in json.loads(pair.meta)["annotations"]:
        mask = mask_utils.decode(ann["segmentation"])
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        _ = [c.reshape(-1, 2) * scale for c in contours]
    resize_encode(image, size, opts.jpeg_quality)


def ours_one(pair: RawPair, opts: RecordOptions) -> None:
    convert_record(pair, opts, Counter())


def images_per_second(fn, pairs: list[RawPair], opts: RecordOptions, repeats: int) -> float:
    fn(pairs[0], opts)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for pair in pairs:
            fn(pair, opts)
    return repeats * len(pairs) / (time.perf_counter() - start)


def worker_peak_rss(pairs: list[RawPair], workers: int) -> float:
    """Peak RSS (MiB) of any worker process in a real conversion of 2 tars of these images."""
    import tarfile
    from io import BytesIO

    with tempfile.TemporaryDirectory() as tmp:
        for t in range(2):
            with tarfile.open(Path(tmp) / f"sa_{t:06d}.tar", "w") as tar:
                for pair in pairs:
                    for ext, data in (("jpg", pair.image), ("json", pair.meta)):
                        info = tarfile.TarInfo(f"{pair.stem}_{t}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, BytesIO(data))
        opts = ConvertOptions(fraction=1.0)
        convert_dataset(SA1BInput([tmp]), Path(tmp) / "out", opts, workers)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    opts = RecordOptions()
    pairs = make_pairs(args.images, args.masks, seed=0)
    rows = fidelity(pairs, opts)
    iou, area = rows[:, 0], rows[:, 1]
    print(f"\nfidelity over {len(iou)} masks (output long side {opts.max_side}, "
          f"epsilon {opts.epsilon}): mean IoU {iou.mean():.4f}")
    print("  percentiles p1/p5/p25/p50: " + " / ".join(
        f"{np.percentile(iou, q):.4f}" for q in (1, 5, 25, 50)))
    for name, lo, hi in (("small <32^2", 0, 32**2), ("medium", 32**2, 96**2),
                         ("large >=96^2", 96**2, np.inf)):
        sel = (area >= lo) & (area < hi)
        if sel.any():
            print(f"  {name:13s} n={sel.sum():5d} mean IoU {iou[sel].mean():.4f}")
    print(f"  share of masks with IoU >= 0.9: {(iou >= 0.9).mean():.3f}")
    rates = {name: images_per_second(fn, pairs, opts, args.repeats)
             for name, fn in (("floor", floor_one), ("naive", naive_one), ("ours", ours_one))}
    print("\nthroughput, one core (images/s):")
    for name, rate in rates.items():
        print(f"  {name:6s} {rate:7.2f} img/s  ({1000 / rate:7.1f} ms/img)")
    print(f"  ours vs naive: {rates['ours'] / rates['naive']:.2f}x faster (target >= 3x)")
    print(f"  ours vs floor: {rates['floor'] / rates['ours']:.2f}x the floor's time "
          "(target <= 3x)")
    rss = worker_peak_rss(pairs, workers=2)
    print(f"\npeak worker RSS in a 2-worker conversion: {rss:.0f} MiB")
    hours = SA1B_IMAGES_2PCT / (rates["ours"] * 32) / 3600
    print(f"projected: {SA1B_IMAGES_2PCT} images (2% of SA-1B) on 32 cores at "
          f"{rates['ours']:.2f} img/s/core = {hours:.2f} h of CPU-bound work "
          f"(input is ~{SA1B_IMAGES_2PCT * 1.0e-3:.0f} GB of tars to read)")


if __name__ == "__main__":
    main()
