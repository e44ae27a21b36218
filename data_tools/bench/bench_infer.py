"""FastSAM's Table 1 on this machine: ms per image, FastSAM-x / -s against SAM ViT-B and ViT-H.

    python data_tools/bench/bench_infer.py              # one full run (~1 h on 2 CPU cores)
    python data_tools/bench/bench_infer.py --quick      # SAM E32 / E64 from E16 (labelled)
    python data_tools/bench/bench_infer.py --skip-slow  # also no SAM ViT-H row

Columns as the paper's Table 1: 1 / 10 / 100 point prompts and everything mode with a 16 x 16,
32 x 32 and 64 x 64 point grid (SAM's E16 / E32 / E64; FastSAM's everything mode is one pass
whatever the grid). The paper's own rows (as its text reads) are printed above ours.

All networks have random weights (speed does not depend on them; no download). FastSAM runs the
whole pipeline (letterbox, network at 1024, NMS, masks at the original resolution): with the
official thresholds (conf 0.4, random weights find few masks) and with conf 0.001 / max_det 300
to force hundreds of masks. Random weights give boxes covering most of the image, the worst case
for mask assembly, so post-processing is also timed on the same network output with SA-1B-like
box sizes. A FastSAM point prompt is everything mode plus a selection over its masks; SAM's is
its image encoder plus one decoder pass over all points. Text: CLIP ViT-B/32 over 100 masked
crops, batched against one call per crop (same crops: the batching alone) and against the
per-mask pipeline users had (whole-image masking, PIL preprocessing and one call per mask).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from fastsam_train import ultra
from fastsam_train.infer import Predictor
from fastsam_train.infer.postprocess import decode_detections, segment_image, torch_threads
from fastsam_train.infer.text import masked_crops, score_masks
from fastsam_train.infer.weights import Weights, build_network

POINTS = (1, 10, 100)
GRIDS = (16, 32, 64)  # SAM everything mode: points per side
SAM_TYPES = ("vit_b", "vit_h")
# FastSAM Table 1 (ms/image, RTX 3090) as ../shared/paper/fastsam_arxiv_2306.12156.txt reads:
# the E64 column and the FastSAM row are cut off there ("cut").
PAPER_TABLE1 = {"SAM-H (0.6G)": [446, 464, 627, 852, 2099, "cut"],
                "SAM-B (136M)": [110, 125, 230, 432, 1383, "cut"],
                "FastSAM (68M)": ["cut"] * 6}


def synthetic_image(h: int = 768, w: int = 1024, seed: int = 0) -> np.ndarray:
    """An RGB image of overlapping shapes with noise (content does not change the timings)."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 90, np.uint8)
    for _ in range(40):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, 200))
        cv2.circle(image, (x, y), r, colour, -1) if rng.random() < 0.5 else \
            cv2.rectangle(image, (x, y), (x + r, y + r), colour, -1)
    return (image + rng.integers(0, 25, image.shape)).clip(0, 255).astype(np.uint8)


def timed(fn: Callable, repeats: int = 1) -> tuple[float, object]:
    """(median seconds over ``repeats`` runs, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def fastsam_rows(scale: str, image: np.ndarray, repeats: int) -> dict:
    torch.manual_seed(0)
    model = ultra.build_model(scale)
    weights = Weights({"arch": "yolov8-seg", "scale": scale, "nc": 1, "reg_max": 26},
                      model.state_dict(), "random")
    official = Predictor(build_network(weights))  # imgsz 1024, conf 0.4, iou 0.9, max_det 300
    many = official.with_options(conf=0.001, max_det=300)
    official.everything(image)  # warm-up
    row = {}
    for name, predictor in (("official", official), ("many", many)):
        parts = []

        def run(p=predictor, parts=parts):
            seg = p.everything(image)[0]
            parts.append(dict(p.timing))
            return seg

        row[name], seg = timed(run, repeats)
        row[f"{name}_masks"] = len(seg)
        row[f"{name}_post"] = statistics.median(p["postprocess"] for p in parts)
        row[f"{name}_forward"] = statistics.median(p["forward"] for p in parts)
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    for n in POINTS:
        pts = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1)
        labels = (rng.random(n) < 0.8).astype(int)
        row[f"points_{n}"] = timed(lambda p=pts, lab=labels: many.points(seg, p, lab),
                                   repeats)[0]
    row["realistic_post"], row["realistic_masks"] = realistic_post(many, image, repeats)
    row["segmentation"] = seg
    return row


def realistic_post(predictor: Predictor, image: np.ndarray, repeats: int) -> tuple[float, int]:
    """Post-processing of the network's own output for 300 detections whose boxes have SA-1B-like
    sizes (sides log-uniform in 16..600 px at 1024) instead of random-weight boxes."""
    from fastsam_train.infer.geometry import letterbox_batch

    o = predictor.options
    x, (lb,) = letterbox_batch([image], o.imgsz)
    with torch.inference_mode():
        raw, proto = predictor.network(x.float() / 255)
    boxes, scores, coeff = decode_detections(raw, 0.0, 1.0, 300)[0]
    rng = np.random.default_rng(0)
    n = len(scores)
    sides = np.exp(rng.uniform(np.log(16), np.log(600), (n, 2)))
    left, top, right, bottom = lb.content_box
    x1 = rng.uniform(left, right - 16, n)
    y1 = rng.uniform(top, bottom - 16, n)
    real = torch.tensor(np.stack([x1, y1, np.minimum(x1 + sides[:, 0], right),
                                  np.minimum(y1 + sides[:, 1], bottom)], 1), dtype=torch.float32)

    workers = o.mask_threads()  # as Predictor.everything

    def post():
        with torch_threads(1):
            det = decode_detections(raw, o.conf, o.iou, o.max_det)  # NMS cost included
            return segment_image((real, scores, coeff), proto[0], lb, o.snap_border,
                                 o.full_iou, chunk=o.chunk, workers=workers), det
    seconds, (seg, _) = timed(post, repeats)
    return seconds, len(seg)


def sam_rows(image: np.ndarray, kind: str, quick: bool) -> dict:
    """SAM ``kind`` (random weights): image encoder, 1 / 10 / 100 point prompts (encoder + one
    decoder pass over all points), everything mode at 16 / 32 / 64 points per side
    (``SamAutomaticMaskGenerator``). ``quick``: E32 and E64 extrapolated from E16 as encoder +
    (grid / 16)^2 x (E16 - encoder), labelled."""
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry[kind](checkpoint=None).eval()
    predictor = SamPredictor(sam)
    row = {"extrapolated": []}
    with torch.inference_mode():
        row["encoder"], _ = timed(lambda: predictor.set_image(image))
        rng = np.random.default_rng(0)
        h, w = image.shape[:2]
        for n in POINTS:
            pts = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1)[:, None]
            coords = predictor.transform.apply_coords_torch(torch.as_tensor(pts).float(), (h, w))
            labels = torch.ones(n, 1, dtype=torch.long)
            row[f"decode_{n}"], _ = timed(lambda c=coords, lab=labels: predictor.predict_torch(
                c, lab, multimask_output=True))
            row[f"points_{n}"] = row["encoder"] + row[f"decode_{n}"]
        for grid in GRIDS:
            if quick and grid > GRIDS[0]:
                scale = (grid / GRIDS[0]) ** 2
                row[f"E{grid}"] = row["encoder"] + scale * (row[f"E{GRIDS[0]}"] - row["encoder"])
                row["extrapolated"].append(f"E{grid}")
                continue
            row[f"E{grid}"], masks = timed(lambda g=grid: SamAutomaticMaskGenerator(
                sam, points_per_side=g).generate(image))
            row[f"E{grid}_masks"] = len(masks)
            print(f"SAM {kind} E{grid} done", flush=True)
    return row


def text_rows(seg, image: np.ndarray, n: int = 100) -> dict:
    import open_clip

    torch.manual_seed(0)
    from fastsam_train.infer.text import Clip

    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    cfg = model.visual.preprocess_cfg
    clip = Clip(model, open_clip.get_tokenizer("ViT-B-32"), tuple(cfg["size"]),
                torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1),
                torch.device("cpu"))
    rgb = torch.from_numpy(image).permute(2, 0, 1)
    masks = seg.masks[:n]
    clip.encode_images(masked_crops(rgb, masks[:2], clip.size))  # warm-up
    batched, _ = timed(lambda: score_masks(clip, rgb, masks, ["a dog"], min_area=0))

    def one_call_per_crop():
        text = clip.encode_texts(["a dog"])
        return [clip.encode_images(masked_crops(rgb, masks[k:k + 1], clip.size)) @ text.T
                for k in range(len(masks))]
    single, _ = timed(one_call_per_crop)

    def per_mask_pipeline():
        """The loop users had (the official repo's shape, written here): per mask, black out
        the whole image outside it, cut its box, PIL bicubic resize + centre crop, one call."""
        from PIL import Image

        text = clip.encode_texts(["a dog"])
        side = clip.size[0]
        out = []
        for mask in masks.numpy():
            ys, xs = np.nonzero(mask)
            if not len(ys):
                continue
            cut = (image * mask[..., None])[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            pil = Image.fromarray(cut)
            scale = side / min(pil.size)
            pil = pil.resize((max(side, round(pil.size[0] * scale)),
                              max(side, round(pil.size[1] * scale))), Image.BICUBIC)
            left, top = (pil.size[0] - side) // 2, (pil.size[1] - side) // 2
            pil = pil.crop((left, top, left + side, top + side))
            crop = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()[None] / 255
            out.append(clip.encode_images(crop) @ text.T)
        return out
    naive, _ = timed(per_mask_pipeline)
    return {"masks": len(masks), "batched": batched, "single": single, "naive": naive,
            **batching_ceiling(clip, single / len(masks))}


def batching_ceiling(clip, seconds_per_call: float) -> dict:
    """How much batching can gain on this device at most: the image encoder's FLOPs per crop
    (torch's FlopCounterMode) against this CPU's float32 matrix-multiply rate (a 2048^3 product,
    best of 5). A batch cannot run faster than that rate, so single calls that already reach a
    large share of it leave little to gain; on a GPU a single call is latency-bound instead."""
    from torch.utils.flop_counter import FlopCounterMode

    crop = torch.rand(1, 3, *clip.size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        clip.model.encode_image(crop)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048 ** 3 / min(timed(lambda: a @ b)[0] for _ in range(5))
    flops = counter.get_total_flops()
    return {"gflop_per_crop": flops / 1e9, "matmul_gflops": peak / 1e9,
            "single_gflops": flops / seconds_per_call / 1e9,
            "max_batching_gain": seconds_per_call / (flops / peak)}


def print_table(results: dict) -> None:
    cols = [f"{n} pt" for n in POINTS] + [f"E{g}" for g in GRIDS]
    print("\nFastSAM paper, Table 1 (ms/image, one RTX 3090; as its text reads)")
    print(f"{'method':<34}" + "".join(f"{c:>12}" for c in cols))
    for name, vals in PAPER_TABLE1.items():
        print(f"{name:<34}" + "".join(f"{v:>12}" for v in vals))
    print("\nhere: ms per image (one 1024x768 image, everything mode includes post-processing)")
    print(f"{'method':<34}" + "".join(f"{c:>12}" for c in cols))
    marks = []
    for kind in SAM_TYPES:
        sam = results.get(f"sam_{kind}")
        if not sam:
            continue
        vals = [f"{sam[f'points_{n}'] * 1e3:.0f}" for n in POINTS]
        vals += [f"{sam[f'E{g}'] * 1e3:.0f}" + ("*" if f"E{g}" in sam["extrapolated"] else "")
                 for g in GRIDS]
        marks += sam["extrapolated"]
        print(f"{'SAM ViT-' + kind[-1].upper():<34}"
              + "".join(f"{v:>12}" for v in vals))
    for scale in ("x", "s"):
        r = results[scale]
        vals = [r["many"] + r[f"points_{n}"] for n in POINTS] + [r["many"]] * len(GRIDS)
        name = f"FastSAM-{scale} ({r['many_masks']} masks)"
        print(f"{name:<34}" + "".join(f"{v * 1e3:>12.0f}" for v in vals))
    if marks:
        print("* extrapolated from E16: encoder + (grid / 16)^2 x (E16 - encoder) "
              "(--quick / --skip-slow)")
    print("\nFastSAM everything mode in detail (median of the repeats)")
    for scale in ("x", "s"):
        r = results[scale]
        for name in ("official", "many"):
            print(f"  FastSAM-{scale} {name:>8}: {r[name] * 1e3:8.0f} ms total, forward "
                  f"{r[f'{name}_forward'] * 1e3:.0f} ms, post-processing "
                  f"{r[f'{name}_post'] * 1e3:.0f} ms ({r[f'{name}_post'] / r[name]:.1%}) for "
                  f"{r[f'{name}_masks']} masks")
        real = r["realistic_post"]
        total = r["many_forward"] + real
        print(f"  FastSAM-{scale} SA-1B-like boxes: post-processing {real * 1e3:.0f} ms for "
              f"{r['realistic_masks']} masks = {real / total:.1%} of forward + post")
    print("\nratios")
    for kind in SAM_TYPES:
        sam = results.get(f"sam_{kind}")
        for scale in ("x", "s") if sam else ():
            r = results[scale]
            print(f"  SAM {kind} E32 / FastSAM-{scale} everything: {sam['E32'] / r['many']:.1f}x"
                  f"   E64: {sam['E64'] / r['many']:.1f}x   E16: {sam['E16'] / r['many']:.1f}x"
                  f"   100 pt: {sam['points_100'] / (r['many'] + r['points_100']):.1f}x")
    for scale in ("x", "s"):
        r = results[scale]
        print(f"  FastSAM-{scale} 100 pt / 1 pt: "
              f"{(r['many'] + r['points_100']) / (r['many'] + r['points_1']):.3f}")
    if "text" in results:
        t = results["text"]
        print(f"  text prompt over {t['masks']} masks: batched {t['batched']:.1f} s; one CLIP "
              f"call per crop (our crops) {t['single']:.1f} s -> {t['single'] / t['batched']:.1f}x;"
              f" per-mask pipeline (mask whole image, PIL resize, one call) {t['naive']:.1f} s "
              f"-> {t['naive'] / t['batched']:.1f}x")
        print(f"  CLIP image encoder {t['gflop_per_crop']:.1f} GFLOP per crop; one call per crop "
              f"runs at {t['single_gflops']:.0f} GFLOP/s against this CPU's float32 matmul rate "
              f"{t['matmul_gflops']:.0f} GFLOP/s: batching can gain at most "
              f"{t['max_batching_gain']:.1f}x here (batched achieved "
              f"{t['gflop_per_crop'] * t['masks'] / t['batched']:.0f} GFLOP/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="SAM E32 / E64 extrapolated from E16 (labelled)")
    parser.add_argument("--skip-slow", action="store_true",
                        help="the slow rows: no SAM ViT-H, SAM E32 / E64 extrapolated")
    parser.add_argument("--no-sam", action="store_true", help="FastSAM rows only")
    parser.add_argument("--no-text", action="store_true", help="skip the CLIP text benchmark")
    parser.add_argument("--image", help="an image file instead of the synthetic 1024x768 one")
    parser.add_argument("--repeats", type=int, default=3, help="FastSAM runs per setting")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = synthetic_image() if not args.image else cv2.imread(args.image)[..., ::-1].copy()
    print(f"image {image.shape[1]}x{image.shape[0]}, torch threads {args.threads}")
    results = {}
    for scale in ("x", "s"):
        results[scale] = fastsam_rows(scale, image, args.repeats)
        print(f"FastSAM-{scale} done", flush=True)
    if not args.no_text:
        results["text"] = text_rows(results["x"]["segmentation"], image)
        print("text done", flush=True)
    for kind in () if args.no_sam else SAM_TYPES[:1] if args.skip_slow else SAM_TYPES:
        results[f"sam_{kind}"] = sam_rows(image, kind, args.quick or args.skip_slow)
    for scale in ("x", "s"):
        results[scale].pop("segmentation")
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
