"""How far the two mask protocols disagree: the same weights and detections, masks assembled
``exact`` (each pixel at its true position) and ``official`` (ultralytics 8.0.120, as the paper's
numbers were made), pixel by pixel.

    python data_tools/bench/compare_protocols.py --weights last.ckpt \
        ../shared/data/sa1b_images/*.jpg

Per image: the letterbox padding in prototype cells (fractional or whole), the masks' pixels,
the pixels on which the two disagree, and those of them more than ``--far`` px from the
boundary of both masks (disagreement that is not just a boundary moving by a pixel).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from fastsam_train.infer import Predictor, read_image
from fastsam_train.infer.geometry import letterbox_batch


def far_from_boundaries(a: np.ndarray, b: np.ndarray, far: float) -> int:
    """Pixels where bool masks ``a`` and ``b`` (H, W) differ, more than ``far`` px from the
    boundary of either (boundary: mask pixels with a 4-neighbour outside, and vice versa)."""
    edges = np.zeros(a.shape, bool)
    kernel = np.ones((3, 3), np.uint8)
    for m in (a, b):
        m8 = m.astype(np.uint8)
        edges |= cv2.dilate(m8, kernel).astype(bool) & ~cv2.erode(m8, kernel).astype(bool)
    distance = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)
    return int(((a ^ b) & (distance > far)).sum())


def compare(predictor: Predictor, path: str, far: float) -> dict:
    """Both protocols on one image: counts of mask pixels and disagreements."""
    image = read_image(path)
    _, (lb,) = letterbox_batch([image], predictor.options.imgsz)
    hp, wp = lb.input_hw[0] / 4, lb.input_hw[1] / 4
    gain = min(hp / lb.orig_hw[0], wp / lb.orig_hw[1])
    pads = ((hp - lb.orig_hw[0] * gain) / 2, (wp - lb.orig_hw[1] * gain) / 2)
    exact, = predictor.with_options(mask_protocol="exact").everything(image)
    official, = predictor.with_options(mask_protocol="official").everything(image)
    assert torch.equal(exact.scores, official.scores), "the detections must be the same"
    a, b = exact.masks.numpy(), official.masks.numpy()
    return {"image": path, "hw": image.shape[:2], "pad_cells": pads,
            "fractional": any(p % 1 for p in pads), "masks": len(a),
            "pixels": int(a.sum()), "differ": int((a ^ b).sum()),
            "far": sum(far_from_boundaries(x, y, far) for x, y in zip(a, b, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--allow-pickle", action="store_true")
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--conf", type=float, default=0.4)
    parser.add_argument("--max-det", type=int, default=300)
    parser.add_argument("--far", type=float, default=2.0, help="px from any mask boundary")
    args = parser.parse_args()
    predictor = Predictor.from_weights(args.weights, args.allow_pickle, imgsz=args.imgsz,
                                       conf=args.conf, max_det=args.max_det)
    print(f"{'image':<28}{'size':>12}{'pad (cells)':>16}{'masks':>7}{'mask px':>12}"
          f"{'differ':>10}{'%':>7}{'> ' + str(args.far) + ' px':>10}")
    total = {"pixels": 0, "differ": 0, "far": 0}
    for path in args.images:
        r = compare(predictor, path, args.far)
        for k in total:
            total[k] += r[k]
        pads = "/".join(f"{p:.2f}" for p in r["pad_cells"])
        print(f"{path.split('/')[-1]:<28}{'x'.join(map(str, r['hw'])):>12}{pads:>16}"
              f"{r['masks']:>7}{r['pixels']:>12}{r['differ']:>10}"
              f"{100 * r['differ'] / max(r['pixels'], 1):>7.2f}{r['far']:>10}")
    print(f"{'all':<28}{'':>12}{'':>16}{'':>7}{total['pixels']:>12}{total['differ']:>10}"
          f"{100 * total['differ'] / max(total['pixels'], 1):>7.2f}{total['far']:>10}")


if __name__ == "__main__":
    main()
