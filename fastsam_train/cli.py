"""``fastsam``: command-line FastSAM inference.

    fastsam predict dog.jpg --weights FastSAM-x.pt --allow-pickle --out out/
    fastsam predict dog.jpg --weights run/checkpoints/last.ckpt --points 420,300 --labels 1
    fastsam predict dog.jpg --weights w.pt --boxes 10,20,200,300 --text "a dog" --out out/
    fastsam convert-weights FastSAM-x.pt fastsam_x_weights.pt --allow-pickle
    fastsam export-onnx --weights fastsam_x_weights.pt --imgsz 1024 --out fastsam_x.onnx

``predict`` writes ``<out>/<image stem>.png`` (masks drawn over the image) and ``.json`` (COCO RLE
masks, xywh boxes, scores). With prompts, only the masks they select are kept. Its defaults are
``conf/predict.yaml`` (read through the package: ``fastsam_train/conf/predict.yaml`` links to it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from fastsam_train.infer import (
    ImageReadError,
    PickleRequiredError,
    PredictOptions,
    Predictor,
    PromptError,
    Segmentation,
    build_network,
    read_image,
    read_weights,
    save_weights,
)
from fastsam_train.infer.output import save_json, save_png
from fastsam_train.infer.prompts import check_boxes, check_points, check_texts
from fastsam_train.plots import mask_overlay

USER_ERRORS = (PromptError, ImageReadError, PickleRequiredError, FileNotFoundError, ValueError)
PROMPT_KEYS = {"point_mode", "text_score", "text_crop", "clip_model", "clip_pretrained"}


def predict_config() -> tuple[PredictOptions, dict]:
    """``conf/predict.yaml`` as (everything-mode ``PredictOptions``, prompt defaults). Unknown
    or missing keys and bad values (e.g. a ``mask_protocol`` that does not exist) raise
    ValueError naming them."""
    source = resources.files("fastsam_train") / "conf" / "predict.yaml"
    cfg = yaml.safe_load(source.read_text())
    prompts = cfg.pop("prompts", None) or {}
    names = {f.name for f in fields(PredictOptions)}
    for what, got, want in (("", set(cfg), names), ("prompts.", set(prompts), PROMPT_KEYS)):
        if got != want:
            raise ValueError(f"{source}: unknown keys {sorted(got - want)} / missing keys "
                             f"{sorted(want - got)} under {what or 'the top level'}")
    return PredictOptions(**cfg), prompts


def _numbers(count: int, what: str):
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.replace(" ", "").split(",")]
        except ValueError:
            values = []
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, "
                                             f"got {text!r}")
        if count == 4 and (values[2] <= values[0] or values[3] <= values[1]):
            raise argparse.ArgumentTypeError(f"box {text!r} needs x1 < x2 and y1 < y2")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastsam", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d, prompts = predict_config()

    p = sub.add_parser("predict", help="segment images (everything mode, optional prompts)")
    p.add_argument("images", nargs="+", help="image files")
    _add_model_args(p)
    p.add_argument("--onnx", help="run this ONNX model (from export-onnx) instead of --weights")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda:0")
    p.add_argument("--half", action="store_true", help="FP16 network (GPU)")
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="network input long side")
    p.add_argument("--conf", type=float, default=d.conf, help="score threshold")
    p.add_argument("--iou", type=float, default=d.iou, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=d.max_det, help="masks kept per image")
    p.add_argument("--mask-protocol", choices=("exact", "official"), default=d.mask_protocol,
                   help="exact: each pixel at its true position; official: ultralytics "
                        "8.0.120's mask assembly bit for bit (what the paper's numbers used)")
    p.add_argument("--batch", type=int, default=1, help="images per network batch")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="refuse larger images (before decoding them)")
    p.add_argument("--points", nargs="+", type=_numbers(2, "a point"), metavar="X,Y")
    p.add_argument("--labels", nargs="+", type=int, metavar="L",
                   help="one per point: 1 foreground, 0 background (default all 1)")
    p.add_argument("--point-mode", choices=("official", "any"), default=prompts["point_mode"],
                   help="official: one merged mask (FastSAM repo); any: every mask with a "
                        "foreground and no background point (ultralytics)")
    p.add_argument("--clean", action="store_true",
                   help="morphological clean-up of the official point mask")
    p.add_argument("--boxes", nargs="+", type=_numbers(4, "a box"), metavar="X1,Y1,X2,Y2")
    p.add_argument("--text", action="append", help="text prompt (repeatable)")
    p.add_argument("--text-score", choices=("softmax", "cosine"), default=prompts["text_score"])
    p.add_argument("--text-crop", choices=("official", "masked"), default=prompts["text_crop"],
                   help="official: the mask's box region of the image on a white canvas, then "
                        "CLIP's preprocessing; masked: the object alone on black, square crop")
    p.add_argument("--clip-model", default=prompts["clip_model"],
                   help="open_clip model name, or local-dir:/folder with open_clip_config.json")
    p.add_argument("--clip-pretrained", default=prompts["clip_pretrained"],
                   help="open_clip weights: a tag (downloaded once by open_clip) or a file")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--no-overlay", action="store_true", help="skip the PNG")
    p.add_argument("--no-json", action="store_true", help="skip the JSON")

    c = sub.add_parser("convert-weights", help="any supported weights -> a weights-only file")
    c.add_argument("source")
    c.add_argument("dest")
    c.add_argument("--allow-pickle", action="store_true", help=_PICKLE_HELP)
    c.add_argument("--half", action="store_true", help="store FP16 tensors (half the size)")

    e = sub.add_parser("export-onnx", help="export the network to ONNX")
    _add_model_args(e)
    e.add_argument("--imgsz", type=int, default=d.imgsz, help="fixed square input size")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--out", required=True, help="output .onnx file")
    return parser


_PICKLE_HELP = ("allow unpickling an ultralytics .pt (runs code from the file: trusted files "
                "only)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help=".ckpt, weights-only .pt, or ultralytics .pt")
    p.add_argument("--allow-pickle", action="store_true", help=_PICKLE_HELP)


def _predictor(args) -> Predictor:
    """The predictor of ``conf/predict.yaml``'s options, with the command line's on top."""
    names = {f.name for f in fields(PredictOptions)}
    defaults, _ = predict_config()
    options = {**{f.name: getattr(defaults, f.name) for f in fields(PredictOptions)},
               **{k: v for k, v in vars(args).items() if k in names}}
    if args.onnx:
        return Predictor.from_onnx(args.onnx, **{k: v for k, v in options.items()
                                                 if k != "imgsz"})
    if not args.weights:
        raise ValueError("pass --weights (or --onnx)")
    return Predictor.from_weights(args.weights, args.allow_pickle, args.device, args.half,
                                  **options)


def _check_prompts(args, hw: tuple[int, int]) -> None:
    if args.points:
        labels = args.labels if args.labels is not None else [1] * len(args.points)
        check_points(torch.tensor(args.points, dtype=torch.float64), torch.tensor(labels), hw)
    elif args.labels:
        raise PromptError("--labels given without --points")
    if args.boxes:
        check_boxes(torch.tensor(args.boxes, dtype=torch.float64), hw)
    if args.text is not None:
        check_texts(args.text)


def _apply_prompts(predictor: Predictor, seg: Segmentation, image: np.ndarray, args
                   ) -> tuple[Segmentation, list[str]]:
    """The selected masks of every prompt given, concatenated, and what selected each."""
    if not (args.points or args.boxes or args.text):
        return seg, ["everything"] * len(seg)
    parts: list[tuple[Segmentation, list[str]]] = []
    if args.boxes:
        part = predictor.boxes(seg, args.boxes)
        parts.append((part, [f"box {i}" for i in range(len(part))]))
    if args.points:
        part = predictor.points(seg, args.points, args.labels, args.point_mode, args.clean)
        parts.append((part, ["points"] * len(part)))
    if args.text:
        from fastsam_train.infer.text import load_clip

        clip = load_clip(args.clip_model, args.clip_pretrained or None, args.device)
        part = predictor.text(seg, image, args.text, clip, args.text_score,
                              crop=args.text_crop)
        parts.append((part, [f"text: {t}" for t in args.text][:len(part)]))
    merged = Segmentation(
        torch.cat([p.boxes for p, _ in parts]), torch.cat([p.scores for p, _ in parts]),
        seg.image_hw, masks=torch.cat([p.masks for p, _ in parts]), extra=dict(seg.extra))
    return merged, [tag for _, tags in parts for tag in tags]


def _drawable(boxes: list | None, hw: tuple[int, int]) -> np.ndarray | None:
    """Boxes clipped to one pixel around the image, so drawing never sees a huge coordinate."""
    if not boxes:
        return None
    h, w = hw
    return np.clip(np.asarray(boxes, np.float64), -1, [w + 1, h + 1, w + 1, h + 1])


def predict(args) -> list[Path]:
    """Run ``fastsam predict``; returns the files written."""
    images = [(Path(name), read_image(name, args.max_pixels)) for name in args.images]
    for name, image in images:
        try:
            _check_prompts(args, image.shape[:2])
        except PromptError as e:
            raise PromptError(f"{name}: {e}") from e
    predictor = _predictor(args)
    out, written = Path(args.out), []
    for start in range(0, len(images), max(args.batch, 1)):
        chunk = images[start:start + max(args.batch, 1)]
        for (name, image), seg in zip(chunk, predictor.everything([im for _, im in chunk]),
                                      strict=True):
            result, tags = _apply_prompts(predictor, seg, image, args)
            if not args.no_json:
                written.append(save_json(result, out / f"{name.stem}.json", str(name), tags))
            if not args.no_overlay:
                drawn = mask_overlay(image, result.masks, points=args.points, labels=args.labels,
                                boxes=_drawable(args.boxes, image.shape[:2]))
                written.append(save_png(drawn, out / f"{name.stem}.png"))
    return written


def convert_weights(args) -> Path:
    return save_weights(read_weights(args.source, args.allow_pickle), args.dest, args.half)


def export(args) -> Path:
    from fastsam_train.infer.onnx import export_onnx

    if not args.weights:
        raise ValueError("pass --weights")
    network = build_network(read_weights(args.weights, args.allow_pickle))
    return export_onnx(network, args.out, args.imgsz, args.opset)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = {"predict": predict, "convert-weights": convert_weights, "export-onnx": export}
    try:
        result = run[args.command](args)
    except USER_ERRORS as e:
        print(f"fastsam {args.command}: error: {e}", file=sys.stderr)
        return 2
    for path in result if isinstance(result, list) else [result]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
