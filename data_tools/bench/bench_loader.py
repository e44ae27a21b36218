"""Training-loader throughput at the fastsam_x settings, per CPU core.

    python data_tools/bench/bench_loader.py              # ~3 min on 2 cores
    python data_tools/bench/bench_loader.py --samples 40 --repeats 1

What one loader worker does per training image, timed in one process (CPU seconds, so the
number is images per second per core): decode the shard sample (JPEG + label text),
``label_dict`` (resize to 1024 on the long side, polygons resampled), the mosaic buffer, the
augmentation chain (mosaic, affine, HSV, flips) and ``Format`` (masks at 1/4). Images: the real
SA-1B images in ``../shared/data/sa1b_images`` when present (else synthetic ones), each with
~100 synthetic SA-1B-like polygons (areas log-uniform from a few pixels to the whole image,
4 to 1500 vertices). Compared:

* ``before``: main's path (8.4's chain, 8.4's ``Format`` with ``sem_masks``, 8.4 polygons);
* ``after``: the fastsam_x path (hyp/fastsam_8_0_120.yaml: 8.0.120's chain, ``TrainFormat``);
* ``after_v8_4``: ``TrainFormat`` with 8.4's chain (the demo's rules);
* ``ultralytics``: ultralytics 8.4's own ``YOLODataset`` (augment=True) on the same images
  written as a YOLO folder (its imread + resize + label cache).

Then the loader cores each GPU needs at the rates ``bench_train.py`` projects for yolov8x-seg at
1024 on A100 / H100.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fastsam_train import ultra
from fastsam_train.data.labels import parse_label
from fastsam_train.train.module import OUR_HYP_KEYS

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "sa1b_images"


VERTICES = (8, 40, 120, 300, 1200)


def polygons_for(rng: np.random.Generator, n: int, max_vertices: int = 1200) -> list[np.ndarray]:
    """``n`` star-shaped polygons, normalised; area log-uniform (~2 px to the whole image at
    1024), vertex counts as SA-1B's traced masks (mostly tens to hundreds, some > 1000)."""
    out = []
    for _ in range(n):
        size = float(np.exp(rng.uniform(np.log(0.003), np.log(1.0))))
        k = int(rng.choice([v for v in VERTICES if v <= max_vertices]))
        centre = rng.uniform(0, 1, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = size / 2 * rng.uniform(0.6, 1.0, k)
        xy = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
        out.append(np.clip(xy, 0, 1).astype(np.float32))
    return out


def load_samples(count: int, masks: int, seed: int = 0, max_vertices: int = 1200
                 ) -> tuple[list[tuple[bytes, str]], str]:
    """(JPEG bytes, YOLO-seg label text) pairs, as a shard holds them; 1024 on the long side."""
    rng = np.random.default_rng(seed)
    paths = sorted(SHARED.glob("*.jpg")) if SHARED.is_dir() else []
    samples = []
    for i in range(count):
        if paths:
            image = cv2.imread(str(paths[i % len(paths)]))
            r = 1024 / max(image.shape[:2])
            image = cv2.resize(image, (round(image.shape[1] * r), round(image.shape[0] * r)),
                               interpolation=cv2.INTER_AREA)
        else:
            image = rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)
        polys = polygons_for(rng, masks, max_vertices)
        text = "\n".join("0 " + " ".join(f"{v:.6f}" for v in p.reshape(-1)) for p in polys)
        samples.append((cv2.imencode(".jpg", image)[1].tobytes(), text))
    return samples, "SA-1B images" if paths else "synthetic images"


def fastsam_hyp(**overrides) -> object:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "hyp" / "fastsam_8_0_120.yaml")
    cfg.epochs = 100
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
             if k not in OUR_HYP_KEYS}
    return ultra.hyperparameters(**{**plain, **overrides})


def our_loader(samples: list, hyp, format_cls: str) -> float:
    """CPU seconds per image of decode -> label_dict -> buffer -> transforms."""
    from ultralytics.data.augment import Compose, Format, v8_transforms

    buffer = ultra.SampleBuffer(64)
    if format_cls == "main":  # main's path: ultralytics' own Format (sem_masks)
        transforms = Compose([*v8_transforms(buffer, 1024, hyp).tolist(), Format(
            bbox_format="xywh", normalize=True, return_mask=True, batch_idx=True,
            mask_ratio=hyp.mask_ratio, mask_overlap=hyp.overlap_mask, bgr=hyp.bgr)])
    else:
        transforms = ultra.build_train_transforms(buffer, 1024, hyp)
    random.seed(0)
    np.random.seed(0)
    for jpg, text in samples[:8]:  # fill the mosaic buffer first (not timed)
        buffer.push(_label(jpg, text, hyp))
    start = time.process_time()
    for jpg, text in samples:
        transforms(buffer.push(_label(jpg, text, hyp)))
    return (time.process_time() - start) / len(samples)


def _label(jpg: bytes, text: str, hyp) -> dict:
    image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    return ultra.label_dict(image, parse_label(text, (1, 1)), 1024, im_file="x",
                            rule=hyp.augment_rule)


def ultralytics_loader(samples: list, hyp, tmp: Path) -> float:
    """CPU seconds per image of ultralytics 8.4's ``YOLODataset.__getitem__`` (augment=True)."""
    from ultralytics.data.dataset import YOLODataset

    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    for i, (jpg, text) in enumerate(samples):
        (tmp / "images" / f"{i:04d}.jpg").write_bytes(jpg)
        (tmp / "labels" / f"{i:04d}.txt").write_text(text)
    dataset = YOLODataset(img_path=str(tmp / "images"), imgsz=1024, augment=True, hyp=hyp,
                          cache=False, batch_size=4, data={"names": {0: "object"}, "nc": 1,
                                                           "channels": 3}, task="segment")
    random.seed(0)
    np.random.seed(0)
    for i in range(8):
        dataset[i]
    start = time.process_time()
    for i in range(len(samples)):
        dataset[i]
    return (time.process_time() - start) / len(samples)


def gpu_rates(mfu: float) -> dict[str, float]:
    """Images/s per GPU for yolov8x-seg at 1024 (bench_train.py's projection)."""
    sys.path.insert(0, str(REPO / "data_tools" / "bench"))
    import bench_train

    flops, _ = bench_train.train_flops_per_image(
        {"arch": "yolov8-seg", "scale": "x", "nc": 1, "reg_max": 26}, 1024)
    return {name: peak * mfu / flops for name, peak in bench_train.GPU_PEAK.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--masks", type=int, default=100, help="polygons per image")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-vertices", type=int, default=1200, choices=VERTICES,
                   help="largest polygon vertex count drawn")
    p.add_argument("--mfu", type=float, default=0.35)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    samples, source = load_samples(args.samples, args.masks, max_vertices=args.max_vertices)
    runs = {"before": [], "after": [], "after_v8_4": [], "ultralytics": []}
    rules84 = {"augment_rule": "v8_4", "loss_rule": "v8_4"}
    for _ in range(args.repeats):
        runs["before"].append(our_loader(samples, fastsam_hyp(**rules84), "main"))
        runs["after"].append(our_loader(samples, fastsam_hyp(), "ours"))
        runs["after_v8_4"].append(our_loader(samples, fastsam_hyp(**rules84), "ours"))
        with tempfile.TemporaryDirectory() as tmp:
            runs["ultralytics"].append(ultralytics_loader(samples, fastsam_hyp(**rules84),
                                                          Path(tmp)))
    rate = {k: 1 / min(v) for k, v in runs.items()}
    print("\n" + "=" * 100)
    print(f"training loader at fastsam_x settings (1024, mosaic, {args.masks} polygons of <= "
          f"{args.max_vertices} vertices per image, {source}), images/s per core (best of "
          f"{args.repeats}, {args.samples} images):")
    for name, value in rate.items():
        print(f"  {name:12s} {value:6.2f} img/s per core")
    print(f"  after / before: {rate['after'] / rate['before']:.2f}x; after / ultralytics 8.4 "
          f"YOLODataset: {rate['after'] / rate['ultralytics']:.2f}x (goals >= 2x, >= 20 img/s)")
    for name, gpu in gpu_rates(args.mfu).items():
        print(f"  {name:8s}: {gpu:6.1f} img/s per GPU at {args.mfu:.0%} utilisation -> "
              f"{gpu / rate['after']:.1f} loader cores per GPU (before: "
              f"{gpu / rate['before']:.1f})")


if __name__ == "__main__":
    main()
