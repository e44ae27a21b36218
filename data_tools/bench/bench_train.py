"""Benchmark our Lightning training against ultralytics' own trainer, on the same images.

    python data_tools/bench/bench_train.py                      # ~12 min on 2 CPU cores
    python data_tools/bench/bench_train.py --repeats 1 --mem-batches 12 --flops-imgsz 640  # ~5 min

Uses the configured demo shards (built when missing, as ``python train.py`` does), copied to a
temp dir so that every run reads the same files. Prints:

1. Training throughput, steady state: our real pipeline (``fastsam_train.train.run.train`` on a
   ``hydra.compose``d ``conf/train.yaml``, ``hyp=ultralytics``) vs ultralytics'
   ``SegmentationTrainer`` on the same images exported to a YOLO folder dataset. Same model
   (yolov8n-seg, nc=1, reg_max=26, built from the same dict; parameter counts checked), imgsz,
   batch, loader workers, torch threads and hyperparameters (our ``conf/hyp`` values are passed
   to ultralytics, so overlap_mask=false and SGD on both sides), CPU, fp32, no validation.
   ``close_mosaic=0`` on both sides keeps mosaic on in these short runs (otherwise both would
   drop it from epoch 0, as epochs <= 10). ultralytics forces ``workers=0`` on the CPU; it is set
   back to ``--workers`` after construction (``--ultra-cpu-default`` also runs its workers=0).
   A batch-end callback on each side records wall and main-process CPU time; img/s counts each
   epoch's batches after its first ``--warmup`` (worker start-up, buffer fill). Each
   configuration runs ``--repeats`` times, interleaved, and the best run is compared: other
   processes on a shared machine only ever slow a run down. Main-process CPU seconds per image
   depend less on that load (they still grow with it, ~10% here) and do not see data waits;
   instances per image are printed as the loss's cost grows with them.
2. Data-pipeline overhead: step time of our training with the real loader vs with one cached
   batch repeated (the real datamodule, its loader replaced by that batch), same model and batch.
3. Memory: peak RSS (sampled every 20 ms) and USS (private memory, after every batch) summed
   over a process and its loader workers (psutil) while iterating ``--mem-batches`` training
   batches from the datamodule over the demo shards, vs over ``--mem-factor`` x as many shards
   (symlinked copies with their own sizes.json). RSS counts the pages that workers share with
   their parent once per process.
4. Projected GPU-hours of the paper's fastsam_x run: FLOPs of one yolov8x-seg (nc=1, reg_max 26)
   training-mode forward at ``--flops-imgsz`` (``FlopCounterMode``: 2 x MACs of conv/matmul),
   x3 for forward + backward, x ~220k images x 100 epochs, on A100 / H100 SXM dense fp16/bf16
   peaks at a utilisation of ``--mfu``.

Training runs and memory measurements each run in a fresh spawned process (clean memory,
threads and global state); their logs go to the console and the numbers are printed at the end.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import lightning as L
import psutil
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from fastsam_train import ultra
from fastsam_train.data.shards import iter_shard
from fastsam_train.train.datamodule import ShardDataModule
from fastsam_train.train.module import OUR_HYP_KEYS
from fastsam_train.train.shardlist import resolve_split

REPO = Path(__file__).resolve().parents[2]
PAPER_IMAGES = 220_000  # the 2% SA-1B sample (~11M images / 50)
PAPER_EPOCHS = 100
GPU_PEAK = {"A100": 312e12, "H100 SXM": 989e12}  # dense fp16/bf16 tensor-core FLOP/s
EVENTS: list[tuple] = []  # (epoch|batch, wall s, CPU s, images, instances) of a run
INFO: dict = {}
MEMORY_KEYS = ("rss", "uss")  # USS: memory private to a process (RSS counts shared pages too)


# --- our training -------------------------------------------------------------------------------
def stamp(kind: str, images: int = 0, instances: int = 0) -> None:
    """Wall clock and this process's CPU time (all its threads; loader workers excluded)."""
    EVENTS.append((kind, time.perf_counter(), time.process_time(), images, instances))


class BatchTimer(L.Callback):
    """Records epoch starts and batch ends (with batch size) into ``EVENTS``."""

    def on_train_start(self, trainer, pl_module) -> None:
        INFO.update(params=count_params(pl_module.model), reg_max=head_reg_max(pl_module.model),
                    workers=trainer.train_dataloader.num_workers)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        stamp("epoch")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stamp("batch", int(batch["img"].shape[0]), len(batch["cls"]))
        INFO["threads"] = torch.get_num_threads()


class CachedBatchDataModule(ShardDataModule):
    """The real datamodule, but every training batch is one cached batch (no data cost)."""

    def train_dataloader(self):
        batches = [b for _, b in zip(range(4), super().train_dataloader(), strict=False)]
        batches.sort(key=lambda b: len(b["cls"]))
        batch = batches[len(batches) // 2]  # median instance count of the first 4 real batches
        INFO["cached_instances"] = len(batch["cls"])
        INFO["real_instances"] = [len(b["cls"]) for b in batches]
        # batch_size=None: the loader hands out the stored batch as it is
        return DataLoader([batch] * self.batches_per_rank(), batch_size=None)


def qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def compose_train_cfg(args, out_dir: Path, shards: Path | None = None, cached: bool = False):
    """``conf/train.yaml`` for the benchmark (outside @hydra.main, so output_dir is set here);
    ``shards`` replaces the configured demo shards."""
    overrides = [
        "hyp=ultralytics", "hyp.close_mosaic=0", "logger=csv",
        f"data.imgsz={args.imgsz}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", f"trainer.max_epochs={args.epochs}",
        "+trainer.limit_val_batches=0",  # ultralytics runs with val=False
        f"paths.root_dir={REPO}", f"paths.output_dir={out_dir}",
        f"+callbacks.bench_timer._target_={qualname(BatchTimer)}",
    ]
    if shards is not None:
        overrides.append(f"data.shards={shards}")
    if cached:
        overrides.append(f"data._target_={qualname(CachedBatchDataModule)}")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def train_ours(args, shards: Path, out_dir: Path, cached: bool) -> dict:
    """One run of ``train(cfg)`` (in a fresh process); returns its events and model facts."""
    from fastsam_train.train.run import train

    os.environ["FASTSAM_CPU_THREADS"] = str(args.threads)
    train(compose_train_cfg(args, out_dir, shards, cached))
    return {"events": list(EVENTS), "load": os.getloadavg()[0], **INFO}


# --- ultralytics' trainer -----------------------------------------------------------------------
def export_yolo_dataset(shards: Path, out: Path) -> Path:
    """The shards' jpg bytes and label text, unchanged, as a YOLO folder dataset; -> data.yaml."""
    for split in ("train", "val"):
        paths, total = resolve_split(str(shards), split)
        count = 0
        for path in map(Path, paths):
            for sample in iter_shard(path):
                name = f"{path.stem}_{sample['__key__']}"
                for kind, ext in (("images", "jpg"), ("labels", "txt")):
                    target = out / kind / split / f"{name}.{ext}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(sample[ext])
                count += 1
        if count != total:
            raise RuntimeError(f"{split}: exported {count} samples, sizes.json says {total}")
    data_yaml = out / "data.yaml"
    data_yaml.write_text(f"path: {out}\ntrain: images/train\nval: images/val\nnc: 1\n"
                         "names:\n  0: object\n")
    return data_yaml


def ultralytics_overrides(args, hyp: dict, data_yaml: Path, out_dir: Path) -> dict:
    """ultralytics trainer args: our hyp values (same recipe) plus the run settings."""
    ours = {k: v for k, v in hyp.items() if k not in (*OUR_HYP_KEYS, *ultra.RULE_KEYS)}
    return {**ours, "model": "yolov8n-seg.yaml",  # a label only: get_model() builds the model
            "data": str(data_yaml), "imgsz": args.imgsz,
            "batch": args.batch, "workers": args.workers, "epochs": args.epochs,
            "device": "cpu", "amp": False, "plots": False, "val": False, "close_mosaic": 0,
            "deterministic": False,  # as our trainer config (ultralytics defaults to True)
            "seed": 0, "project": str(out_dir), "name": "ultralytics", "exist_ok": True}


def train_ultralytics(args, model_cfg: dict, overrides: dict, workers: int) -> dict:
    """One run of ultralytics' own SegmentationTrainer (in a fresh process)."""
    # The comparison is against ultralytics itself, so this is the one place outside the adapter
    # that imports it. check_font would try to download Arial.ttf: skip it (no plots anyway).
    import ultralytics.data.utils as ul_data
    from ultralytics.models.yolo.segment import SegmentationTrainer

    ul_data.check_font = lambda *a, **k: None

    class BenchTrainer(SegmentationTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            return ultra.build_model(**model_cfg)  # the dict our module builds from

        def preprocess_batch(self, batch):
            self.bench_batch = (int(batch["img"].shape[0]), len(batch["cls"]))
            return super().preprocess_batch(batch)

        def validate(self):  # val=False still validates the last epoch; not what we time
            return {}, None

        def final_eval(self):
            pass

    trainer = BenchTrainer(overrides=overrides)
    trainer.args.workers = workers  # its __init__ forces 0 on the CPU
    add_ultralytics_timers(trainer, args.threads)
    trainer.train()
    return {"events": list(EVENTS), "load": os.getloadavg()[0], **INFO}


def add_ultralytics_timers(trainer, threads: int) -> None:
    def on_train_start(t):
        torch.set_num_threads(threads)  # select_device() reset it to its own NUM_THREADS
        INFO.update(params=count_params(t.model), reg_max=head_reg_max(t.model),
                    workers=t.train_loader.num_workers)

    def on_epoch_start(t):
        stamp("epoch")

    def on_batch_end(t):
        stamp("batch", *t.bench_batch)
        INFO["threads"] = torch.get_num_threads()

    trainer.add_callback("on_train_start", on_train_start)
    trainer.add_callback("on_train_epoch_start", on_epoch_start)
    trainer.add_callback("on_train_batch_end", on_batch_end)


# --- timing analysis ----------------------------------------------------------------------------
def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def head_reg_max(model: torch.nn.Module) -> int:
    return int(model.model[-1].reg_max)


def split_epochs(events: list) -> list[tuple[float, list[tuple]]]:
    """Events -> per epoch (start time, [(batch end time, CPU time, images, instances), ...])."""
    epochs = []
    for kind, wall, *rest in events:
        if kind == "epoch":
            epochs.append((wall, []))
        elif epochs:
            epochs[-1][1].append((wall, *rest))
    return [e for e in epochs if e[1]]


def steady_rate(events: list, warmup: int) -> dict:
    """img/s, s/step, main-process CPU s/step and instances/image over each epoch's batches
    after its first ``warmup``; also the mean wait from epoch start to the first batch."""
    images = instances = 0
    walls, cpus, starts = [], [], []
    for start, batches in split_epochs(events):
        starts.append(batches[0][0] - start)
        kept = batches[warmup - 1:]
        images += sum(b[2] for b in kept[1:])
        instances += sum(b[3] for b in kept[1:])
        walls += [b[0] - a[0] for a, b in zip(kept, kept[1:], strict=False)]
        cpus += [b[1] - a[1] for a, b in zip(kept, kept[1:], strict=False)]
    if not walls:
        raise RuntimeError(f"no batches after the {warmup} warm-up ones: raise --epochs")
    return {"img_s": images / sum(walls), "step_s": sum(walls) / len(walls),
            "img_cpu_s": images / sum(cpus), "cpu_step_s": sum(cpus) / len(cpus),
            "inst_img": instances / images, "steps": len(walls),
            "first_batch_s": statistics.mean(starts)}


# --- memory -------------------------------------------------------------------------------------
def replicate_shards(src: Path, dst: Path, factor: int) -> Path:
    """``dst`` with ``factor`` symlinked copies of every train shard of ``src`` (own names and
    sizes.json) and ``src``'s val split."""
    sizes = json.loads((src / "train" / "sizes.json").read_text())
    (dst / "train").mkdir(parents=True)
    new_sizes = {}
    for copy in range(factor):
        for name, n in sizes.items():
            new = f"copy{copy:02d}-{name}"
            (dst / "train" / new).symlink_to((src / "train" / name).resolve())
            new_sizes[new] = n
    (dst / "train" / "sizes.json").write_text(json.dumps(new_sizes, indent=1))
    (dst / "val").symlink_to((src / "val").resolve(), target_is_directory=True)
    return dst


def tree_memory(full: bool) -> dict[str, int]:
    """Summed RSS (and USS if ``full``) bytes of this process and all its descendants."""
    total = dict.fromkeys(MEMORY_KEYS if full else ("rss",), 0)
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            info = proc.memory_full_info() if full else proc.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for key in total:
            total[key] += getattr(info, key)
    return total


class PeakMemory(threading.Thread):
    """Peak ``tree_memory``: RSS every 20 ms in this thread; RSS and USS when ``sample()`` is
    called (after every batch: reading smaps takes ~30 ms per process and stalls it, so it is
    done at the same points of progress in every run rather than on a timer)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = dict.fromkeys(MEMORY_KEYS, 0)
        self.done = threading.Event()

    def sample(self, full: bool = True) -> None:
        for key, value in tree_memory(full).items():
            self.peak[key] = max(self.peak[key], value)

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.sample(full=False)


def loader_peak_memory(data_cfg: dict, shards: Path, batches: int, chunk: int) -> dict:
    """Peak tree memory while iterating ``batches`` training batches (in a fresh process), from
    a fresh loader (new workers) every ``chunk`` batches, as each demo epoch does. The data
    config carries the run's hyp (its ``hyp: ${hyp}``)."""
    dm = hydra.utils.instantiate(data_cfg, shards=str(shards), make_demo=None)
    dm.setup("fit")
    sampler = PeakMemory()
    sampler.start()
    done = 0
    while done < batches:
        for _ in zip(range(min(chunk, batches - done)), dm.train_dataloader(), strict=False):
            sampler.sample()
            done += 1
    sampler.done.set()
    sampler.join()
    return {**sampler.peak, "batches": done, "train_total": dm.train_total,
            "shards": len(dm.train_shards)}


# --- FLOPs and projection -----------------------------------------------------------------------
def train_flops_per_image(model_cfg: dict, imgsz: int) -> tuple[float, int]:
    """(forward FLOPs of one image at imgsz x imgsz in training mode x 3, parameter count).
    The forward runs on the meta device: shapes only, no arithmetic, the same count."""
    model = ultra.build_model(**model_cfg).train()
    params = count_params(model)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.to("meta")(torch.zeros(1, 3, imgsz, imgsz, device="meta"))
    return 3.0 * counter.get_total_flops(), params


def projection_lines(flops_img: float, mfu: float, gpus: int) -> list[str]:
    total = flops_img * PAPER_IMAGES * PAPER_EPOCHS
    lines = [f"  total training compute: {total:.3g} FLOP ({PAPER_IMAGES} images x "
             f"{PAPER_EPOCHS} epochs)"]
    for name, peak in GPU_PEAK.items():
        gpu_hours = total / (peak * mfu) / 3600
        lines.append(f"  {name:8s} ({peak / 1e12:.0f} TFLOP/s peak, {mfu:.0%} utilisation): "
                     f"{gpu_hours:6.1f} GPU-hours = {gpu_hours / gpus:5.1f} h wall on {gpus} GPUs "
                     f"({peak * mfu / flops_img:.0f} img/s per GPU for the loaders to feed)")
    return lines


# --- driver -------------------------------------------------------------------------------------
def isolated(fn, *args):
    """``fn(*args)`` in a fresh spawned process whose loader workers fork, as in ``train.py``."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_forking, fn, *args).result()


def _forking(fn, *args):
    # A spawned child inherits "spawn" as its default start method: DataLoader workers would then
    # re-import everything (~20 s each here) instead of forking.
    mp.set_start_method("fork", force=True)
    return fn(*args)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="loader workers, both trainers")
    p.add_argument("--epochs", type=int, default=2, help="per training run (demo: 12 batches)")
    p.add_argument("--warmup", type=int, default=2, help="batches excluded per epoch (>= 1)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("FASTSAM_CPU_THREADS", "1")),
                   help="torch threads, both trainers (our train() default: 1)")
    p.add_argument("--mem-batches", type=int, default=24)
    p.add_argument("--mem-factor", type=int, default=10, help="shard multiplier")
    p.add_argument("--flops-imgsz", type=int, default=1024)
    p.add_argument("--mfu", type=float, default=0.35, help="realised fraction of GPU peak")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="runs per training configuration")
    p.add_argument("--ultra-cpu-default", action="store_true",
                   help="also run ultralytics with its CPU default workers=0")
    args = p.parse_args()
    if args.warmup < 1:
        p.error("--warmup must be >= 1")
    return args


def copy_shards(src: Path, dst: Path) -> Path:
    """The shards listed in ``src``'s sizes.json (train and val) copied to ``dst``: every run
    reads the same files even if the demo is rebuilt meanwhile."""
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True)
        paths, _ = resolve_split(str(src), split)
        for path in [*map(Path, paths), src / split / "sizes.json"]:
            shutil.copyfile(path, dst / split / path.name)
    return dst


def prepare(args, tmp: Path) -> tuple:
    """Demo shards (built if missing) copied to ``tmp``, their YOLO export, and the composed
    config's data, hyp and model sections as plain dicts."""
    cfg = compose_train_cfg(args, tmp / "compose")
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    shards = copy_shards(Path(cfg.data.shards), tmp / "shards")
    data_yaml = export_yolo_dataset(shards, tmp / "yolo")
    plain = OmegaConf.to_container(cfg, resolve=True)
    return shards, data_yaml, plain["data"], plain["hyp"], plain["model"]


def run_config(name: str, args, out: Path, shards: Path, ul_overrides: dict,
               model_cfg: dict) -> dict:
    """One training run of configuration ``name`` in a fresh process, with its steady rates."""
    if name.startswith("ours"):
        run = isolated(train_ours, args, shards, out, name == "ours_cached")
    else:
        workers = 0 if name == "ultralytics_w0" else args.workers
        run = isolated(train_ultralytics, args, model_cfg,
                       {**ul_overrides, "project": str(out)}, workers)
    return {**run, **steady_rate(run.pop("events"), args.warmup)}


def bench_training(args, tmp: Path, shards: Path, data_yaml: Path, hyp: dict,
                   model_cfg: dict) -> dict[str, list[dict]]:
    """Every configuration ``--repeats`` times, interleaved (so load from other processes on
    the machine spreads over all of them); -> name: runs."""
    names = ["ours", "ultralytics", "ours_cached"]
    names += ["ultralytics_w0"] if args.ultra_cpu_default else []
    overrides = ultralytics_overrides(args, hyp, data_yaml, tmp)
    runs = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            out = tmp / f"{name}_{repeat}"
            runs[name].append(run_config(name, args, out, shards, overrides, model_cfg))
    return runs


def run_line(name: str, reps: list[dict], best: dict) -> str:
    rates = ", ".join(f"{r['img_s']:.2f}" for r in reps)
    loads = ", ".join(f"{r['load']:.1f}" for r in reps)
    return (f"  {name:14s} {best['img_s']:5.2f} img/s {best['step_s']:5.3f} s/step (all runs "
            f"{rates} img/s at load avg {loads}; main-process CPU {best['cpu_step_s']:.3f} "
            f"s/step = {best['img_cpu_s']:.2f} img/CPU-s; {best['inst_img']:.1f} instances/img; "
            f"{best['steps']} steps, "
            f"{best['threads']} threads, {best['workers']} workers; epoch start -> first batch "
            f"{best['first_batch_s']:.2f} s)")


def training_lines(args, runs: dict[str, list[dict]]) -> list[str]:
    best = {name: max(reps, key=lambda r: r["img_s"]) for name, reps in runs.items()}
    ours, ul, cached = best["ours"], best["ultralytics"], best["ours_cached"]
    lines = [f"1. training throughput: yolov8n-seg imgsz {args.imgsz} batch {args.batch}, "
             f"{args.epochs} epochs x {args.repeats} runs each (best shown), first "
             f"{args.warmup} batches of each epoch excluded"]
    lines += [run_line(name, reps, best[name]) for name, reps in runs.items()]
    same = ours["params"] == ul["params"] and ours["reg_max"] == ul["reg_max"] == 26
    lines += [f"  same model: {same} (params ours {ours['params']:,}, ultralytics "
              f"{ul['params']:,}; head reg_max {ours['reg_max']} / {ul['reg_max']})",
              f"  ours / ultralytics: {ours['img_s'] / ul['img_s']:.2f}x img/s (goal >= 1.0x); "
              f"{ours['img_cpu_s'] / ul['img_cpu_s']:.2f}x img per main-process CPU second"]
    if "ultralytics_w0" in best:
        lines.append(f"  ours / ultralytics with its CPU default workers=0: "
                     f"{ours['img_s'] / best['ultralytics_w0']['img_s']:.2f}x img/s")
    lines += [f"2. data-pipeline overhead: step time real loader {ours['step_s']:.3f} s vs one "
              f"cached batch {cached['step_s']:.3f} s (cached batch {cached['cached_instances']} "
              f"instances, the median of the first real batches {cached['real_instances']})",
              f"  ratio real / cached: {ours['step_s'] / cached['step_s']:.3f}x (goal <= 1.10x)"]
    return lines


def memory_lines(args, tmp: Path, shards: Path, data_cfg: dict) -> list[str]:
    many = replicate_shards(shards, tmp / f"shards_x{args.mem_factor}", args.mem_factor)
    chunk = resolve_split(str(shards), "train")[1] // args.batch  # the demo's batches per epoch
    base, big = (isolated(loader_peak_memory, data_cfg, root, args.mem_batches, chunk)
                 for root in (shards, many))
    lines = [f"3. loader memory: {args.mem_batches} training batches ({chunk} per fresh loader), "
             f"{args.workers} workers; peak summed over main + workers"]
    for name, m in (("demo shards", base), (f"{args.mem_factor}x shards", big)):
        lines.append(f"  {name:12s} {m['shards']:4d} shards {m['train_total']:6d} samples: "
                     + "  ".join(f"{k.upper()} {m[k] / 2**20:7.1f} MiB" for k in MEMORY_KEYS))
    lines.append("  growth: " + "  ".join(
        f"{k.upper()} {big[k] / base[k] - 1:+.1%} ({(big[k] - base[k]) / 2**20:+.1f} MiB)"
        for k in MEMORY_KEYS) + " (goal < 10%)")
    return lines


def flops_lines(args, model_cfg: dict) -> list[str]:
    x_cfg = {**model_cfg, "scale": "x"}
    flops, params = train_flops_per_image(x_cfg, args.flops_imgsz)
    return [f"4. fastsam_x projection: yolov8x-seg nc=1 reg_max={x_cfg['reg_max']} "
            f"({params / 1e6:.2f}M params) at {args.flops_imgsz}: forward "
            f"{flops / 3e9:.1f} GFLOP/image, training (x3) {flops / 1e9:.1f} GFLOP/image",
            *projection_lines(flops, args.mfu, args.gpus)]


def main() -> None:
    args = parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")  # spawned runs: ultralytics makes no online checks
    clock = [("start", time.perf_counter())]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as name:
        tmp = Path(name)
        shards, data_yaml, data_cfg, hyp, model_cfg = prepare(args, tmp)
        clock.append(("prepare", time.perf_counter()))
        lines = training_lines(args, bench_training(args, tmp, shards, data_yaml, hyp, model_cfg))
        clock.append(("training runs", time.perf_counter()))
        lines += memory_lines(args, tmp, shards, data_cfg)
        clock.append(("memory", time.perf_counter()))
    lines += flops_lines(args, model_cfg)
    clock.append(("flops", time.perf_counter()))
    spent = ", ".join(f"{name} {t - t0:.0f} s"
                      for (_, t0), (name, t) in zip(clock, clock[1:], strict=False))
    print("\n" + "=" * 100, *lines, f"time: {spent}; total {clock[-1][1] - clock[0][1]:.0f} s "
          f"(load avg now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", sep="\n")


if __name__ == "__main__":
    main()
