"""The ultralytics 8.0.120 side of ``parity_8_0.py``; runs inside the harness's own venv.

    <venv>/bin/python data_tools/parity/parity_worker_8_0.py <workdir>

Reads ``<workdir>/inputs.npz`` and ``spec.json`` (written by ``parity_8_0.py``), writes
``<workdir>/theirs_{loss,train,pipeline}.npz``. Imports only numpy, torch, cv2 and ultralytics
8.0.120 (never fastsam_train). The FastSAM fork's two changes are applied at run time by the
shims below (nothing in site-packages is edited).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import random
import sys
import textwrap
from collections import deque
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


# --- shims: the FastSAM fork's two changes ------------------------------------------------------
def apply_fork_shims() -> None:
    """reg_max 26 in ``Detect.__init__`` (the fork's head.py) by re-compiling 8.0.120's own
    ``__init__`` with that one assignment changed; overlap_mask False is passed as an argument
    (the fork's default.yaml) wherever 8.0.120 reads it."""
    from ultralytics.nn.modules import head

    source = textwrap.dedent(inspect.getsource(head.Detect.__init__))
    if source.count("self.reg_max = 16") != 1 or source.count("super().__init__()") != 1:
        raise RuntimeError("8.0.120's Detect.__init__ is not the expected one")
    # Detect's base is nn.Module; a function compiled outside the class has no super() cell
    source = source.replace("self.reg_max = 16", "self.reg_max = 26").replace(
        "super().__init__()", "head.nn.Module.__init__(self)")
    namespace = {**vars(head), "head": head}
    exec(compile(source, head.__file__, "exec"), namespace)
    head.Detect.__init__ = namespace["__init__"]


def build_model(weights: dict[str, np.ndarray], hyp_overrides: dict):
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.yolo.cfg import get_cfg
    from ultralytics.yolo.utils import DEFAULT_CFG

    model = SegmentationModel("yolov8n-seg.yaml", ch=3, nc=1, verbose=False)
    assert model.model[-1].reg_max == 26
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)
    model.args = get_cfg(DEFAULT_CFG, hyp_overrides)
    return model


def fingerprint(state: dict, projections: dict) -> np.ndarray:
    """(T, 3): per float tensor sum, sum of squares and a seeded random projection."""
    rows = []
    for key, value in state.items():
        if not value.dtype.is_floating_point:
            continue
        v = value.detach().double().flatten()
        rows.append([float(v.sum()), float((v * v).sum()),
                     float(v @ torch.from_numpy(projections[key]).double())])
    return np.array(rows)


# --- (a) losses ----------------------------------------------------------------------------------
def run_loss(inputs: dict, spec: dict, out: Path) -> None:
    model = build_model(weights(inputs), {"overlap_mask": False})
    model.train()
    items, totals = [], []
    for b in range(spec["loss"]["batches"]):
        batch = {k: torch.from_numpy(np.array(inputs[f"loss{b}_{k}"]))
                 for k in ("img", "batch_idx", "cls", "bboxes", "masks")}
        batch["img"] = batch["img"].float() / 255
        total, detached = model.loss(batch)
        items.append(detached.numpy())
        totals.append(float(total))
    np.savez(out / "theirs_loss.npz", items=np.array(items), totals=np.array(totals))


# --- (b) optimizer steps -------------------------------------------------------------------------
class FixedLoader:
    """What 8.0.120's ``_do_train`` reads of a loader: ``len``, iteration, ``num_workers``,
    ``dataset`` (its length feeds the "auto" optimizer rule), ``reset``."""

    def __init__(self, batches: list[dict], nb: int, dataset_size: int):
        self.batches, self.nb, self.num_workers = batches, nb, 0
        self.dataset = range(dataset_size)

    def __len__(self) -> int:
        return self.nb

    def __iter__(self):
        for i in range(self.nb):
            yield {k: v.clone() for k, v in self.batches[i % len(self.batches)].items()}

    def reset(self) -> None:
        pass


def run_train(inputs: dict, spec: dict, out: Path) -> None:
    for run, overrides in spec["train_runs"].items():
        train_once(inputs, spec, out / f"theirs_train_{run}.npz", overrides)


def train_once(inputs: dict, spec: dict, path: Path, hyp_overrides: dict) -> None:
    from ultralytics.yolo.engine import trainer as trainer_module
    from ultralytics.yolo.v8.segment.train import SegmentationTrainer

    t = spec["train"]
    batches = [{k: torch.from_numpy(np.array(inputs[f"train{b}_{k}"]))
                for k in ("img", "batch_idx", "cls", "bboxes", "masks")}
               for b in range(t["distinct"])]
    projections = {k[5:]: np.array(v) for k, v in inputs.items() if k.startswith("proj_")}
    record: dict[str, list] = {"fp": [], "lr": [], "momentum": [], "loss": []}
    # the harness feeds batches directly: no dataset folder to check
    trainer_module.check_det_dataset = lambda data, autodownload=True: {
        "train": "unused", "val": "unused", "nc": 1, "names": {0: "object"}}

    class Fixed(SegmentationTrainer):
        def get_dataset(self, data):
            return "train", "val"

        def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
            return FixedLoader(batches, t["nb"], t["dataset_size"])

        def setup_model(self):
            self.model = build_model(weights(inputs), {"overlap_mask": False}).double()

        def preprocess_batch(self, batch):
            # float64, as Lightning's precision="64-true" runs ours: every floating input in
            # float64 and float64 as the default dtype (set below)
            batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
            batch["img"] = batch["img"].double() / 255
            return batch

        def get_validator(self):
            self.loss_names = "box_loss", "seg_loss", "cls_loss", "dfl_loss"
            return SimpleNamespace(metrics=SimpleNamespace(keys=[]))

        def validate(self):
            return {}, 0.0

        def save_model(self):
            pass

        def final_eval(self):
            pass

    overrides = {"model": "yolov8n-seg.yaml", "data": "unused.yaml", "epochs": t["epochs"],
                 "batch": t["batch"], "imgsz": t["imgsz"], "device": "cpu", "workers": 0,
                 "amp": False, "plots": False, "val": False, "overlap_mask": False,
                 "nbs": t["nbs"], "warmup_epochs": t["warmup_epochs"], "optimizer": "auto",
                 "close_mosaic": 0, "project": str(path.parent / "runs"), "name": path.stem,
                 "exist_ok": True, "seed": 0, "deterministic": False, "verbose": False,
                 **hyp_overrides}
    trainer = Fixed(overrides=overrides)

    def on_batch_end(tr):
        record["fp"].append(fingerprint(tr.model.state_dict(), projections))
        kinds = ("bias", "weight", "bn")  # 8.0.120's group order (build_optimizer)
        groups = dict(zip(kinds, tr.optimizer.param_groups, strict=True))
        record["lr"].append([groups[k]["lr"] for k in kinds])
        record["momentum"].append([groups[k].get("momentum", 0.0) for k in kinds])
        record["loss"].append(tr.loss_items.numpy())
        record.setdefault("keys", [k for k, v in tr.model.state_dict().items()
                                   if v.dtype.is_floating_point])

    trainer.add_callback("on_train_batch_end", on_batch_end)
    torch.set_default_dtype(torch.float64)
    trainer.train()
    torch.set_default_dtype(torch.float32)
    state = {f"model/{k}": v.numpy() for k, v in trainer.model.state_dict().items()}
    state.update({f"ema/{k}": v.numpy() for k, v in trainer.ema.ema.state_dict().items()})
    np.savez(path, fp=np.array(record["fp"]), lr=np.array(record["lr"]),
             momentum=np.array(record["momentum"]), loss=np.array(record["loss"]),
             keys=np.array(record["keys"]), ema_updates=trainer.ema.updates,
             optimizer=type(trainer.optimizer).__name__,
             warmup_bias_lr=trainer.args.warmup_bias_lr, **state)


# --- (c) augmentations ---------------------------------------------------------------------------
class BufferDataset:
    """The parts of 8.0.120's ``BaseDataset`` its mix transforms use, over a bounded FIFO of
    label dicts built as ``get_image_and_label`` + ``update_labels_info`` build them."""

    def __init__(self, maxlen: int):
        self.items: deque = deque(maxlen=maxlen)
        self.data, self.use_keypoints, self.use_segments = {}, False, True

    @property
    def buffer(self):
        return list(range(len(self.items)))

    def __len__(self):
        return len(self.items)

    def get_image_and_label(self, index):
        return copy.deepcopy(self.items[index])


def label(image: np.ndarray, polygons: list[np.ndarray], name: str) -> dict:
    from ultralytics.yolo.utils.instance import Instances
    from ultralytics.yolo.utils.ops import segments2boxes

    h, w = image.shape[:2]
    boxes = segments2boxes(polygons).astype(np.float32)
    return {"im_file": name, "img": image, "ori_shape": (h, w), "resized_shape": (h, w),
            "ratio_pad": (1.0, 1.0), "cls": np.zeros((len(polygons), 1), np.float32),
            "instances": Instances(boxes, [p.copy() for p in polygons], None, bbox_format="xywh",
                                   normalized=True)}


def digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_pipeline(inputs: dict, spec: dict, out: Path) -> None:
    from ultralytics.yolo.cfg import get_cfg
    from ultralytics.yolo.data.augment import Compose, Format, v8_transforms
    from ultralytics.yolo.data.dataset import YOLODataset
    from ultralytics.yolo.utils import DEFAULT_CFG

    p = spec["pipeline"]
    samples = decode_samples(inputs, p["samples"])
    hyp = get_cfg(DEFAULT_CFG, {"overlap_mask": False})
    dataset = BufferDataset(p["buffer"])
    transforms = v8_transforms(dataset, p["imgsz"], hyp)
    transforms = Compose([*transforms.tolist(), Format(bbox_format="xywh", normalize=True,
                                                      return_mask=True, batch_idx=True,
                                                      mask_ratio=4, mask_overlap=False)])
    random.seed(p["seed"])
    np.random.seed(p["seed"])
    rows, digests, kept, means, box_sums = [], [], [], [], []  # rows: (n, w, h, areas)
    for i in range(p["draws"]):
        image, polygons, name = samples[i % len(samples)]
        dataset.items.append(label(image, polygons, name))
        result = transforms(dataset.get_image_and_label(len(dataset.items) - 1))
        rows.append(summary(result))
        digests.append(digest(result["masks"].numpy()))
        box_sums.append(result["bboxes"].numpy().astype(np.float64).sum(0))
        means.append(result["img"].numpy().reshape(3, -1).mean(1))
        if i < p["keep"]:
            kept.append(result)
    batch = YOLODataset.collate_fn(kept[:4])
    keys = {k: [str(v.dtype), list(v.shape)] if torch.is_tensor(v) else type(v).__name__
            for k, v in batch.items()}
    np.savez(out / "theirs_pipeline.npz", digests=np.array(digests), keys=json.dumps(keys),
             image_means=np.array(means), box_sums=np.array(box_sums), **opencv_probe(),
             **flatten_rows(rows),
             **{f"kept{i}_{k}": r[k].numpy() for i, r in enumerate(kept)
                for k in ("img", "masks", "bboxes")})


def opencv_probe() -> dict:
    """The two OpenCV image operations of the chain on a fixed input: warpAffine and the
    BGR -> HSV -> LUT -> BGR round trip (OpenCV builds differ here; masks use neither)."""
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (5, 5), 0)
    m = np.array([[0.83, 0.0, -40.3], [0.0, 0.83, -35.7]], np.float32)
    warped = cv2.warpAffine(img, m, dsize=(128, 128), borderValue=(114, 114, 114))
    lut = np.stack([(np.arange(256) * 1.01) % 180, np.clip(np.arange(256) * 0.8, 0, 255),
                    np.clip(np.arange(256) * 1.2, 0, 255)], -1).astype(np.uint8)
    hsv = cv2.cvtColor(cv2.LUT(cv2.cvtColor(warped, cv2.COLOR_BGR2HSV), lut.reshape(1, 256, 3)),
                       cv2.COLOR_HSV2BGR)
    return {"probe_warp": warped, "probe_hsv": hsv, "opencv": cv2.__version__}


def summary(result: dict) -> tuple:
    """(instances, box widths, box heights, mask areas) of one transformed sample."""
    boxes = result["bboxes"].numpy()
    return (len(boxes), boxes[:, 2].copy(), boxes[:, 3].copy(),
            result["masks"].numpy().reshape(len(boxes), -1).sum(1))


def flatten_rows(rows: list[tuple]) -> dict[str, np.ndarray]:
    """Per-draw summaries as flat arrays: ``counts`` (D,) and the concatenated per-instance
    ``widths``, ``heights`` (normalised) and ``areas`` (mask pixels)."""
    return {"counts": np.array([r[0] for r in rows]),
            **{name: np.concatenate([r[j] for r in rows]) if rows else np.zeros(0)
               for j, name in ((1, "widths"), (2, "heights"), (3, "areas"))}}


def decode_samples(inputs: dict, count: int) -> list:
    out = []
    for i in range(count):
        image = np.array(inputs[f"sample{i}_img"])
        flat, lengths = np.array(inputs[f"sample{i}_xy"]), np.array(inputs[f"sample{i}_len"])
        polygons = np.split(flat, np.cumsum(lengths)[:-1])
        out.append((image, [p.astype(np.float32) for p in polygons], f"sample{i}"))
    return out


def weights(inputs: dict) -> dict:
    return {k[2:]: v for k, v in inputs.items() if k.startswith("w_")}


def main() -> None:
    work = Path(sys.argv[1])
    parts = sys.argv[2:] or ["loss", "train", "pipeline"]
    spec = json.loads((work / "spec.json").read_text())
    torch.set_num_threads(1)
    apply_fork_shims()
    inputs = dict(np.load(work / "inputs.npz", allow_pickle=False))
    for part in parts:
        {"loss": run_loss, "train": run_train, "pipeline": run_pipeline}[part](inputs, spec, work)
        print(f"8.0.120 worker: {part} done", flush=True)


if __name__ == "__main__":
    main()
