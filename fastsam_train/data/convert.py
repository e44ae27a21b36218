"""Any input (SA-1B, COCO-format json, BSDS500) -> webdataset shards: per-source work units,
worker processes, resume, manifest. ``convert_dataset`` is the one entry point (the CLI, the
demo data, the tests and the benchmarks all call it).

Layout of ``out_dir``::

    train/<source>-000000.tar ...   val/<source>-000000.tar ...   (samples: jpg, txt, json)
    train/sizes.json  val/sizes.json                              ({shard: samples})
    done/<source>.json                                            (one marker per finished unit)
    manifest.json                                                 (config, ids, skips, totals)
    convert_config.json                                           (guards against mixing configs)

Resumption: a unit is finished when its marker exists (written atomically after its shards).
A rerun skips finished units and redoes the others from the start; since sample order, JPEG
encoding and tar headers are deterministic, the redone shards are byte-identical to what an
uninterrupted run writes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from fastsam_train.data.inputs import DatasetInput, build_input
from fastsam_train.data.manifest import SPLITS, finalize
from fastsam_train.data.records import RecordOptions, SkipImage
from fastsam_train.data.sa1b import Source, SourceError
from fastsam_train.data.sampling import is_val, keep_image, select_sources
from fastsam_train.data.shards import ShardWriter, atomic_write_json

log = logging.getLogger(__name__)
STAGES = ("all", "convert", "finalize")


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides the output (the worker count and task split do not)."""

    fraction: float = 0.02
    seed: int = 0
    strategy: str = "tars"
    val_fraction: float = 0.005
    samples_per_shard: int = 1000
    folder_chunk: int = 1000  # images per work unit (extracted folders, COCO json, BSDS)
    record: RecordOptions = field(default_factory=RecordOptions)

    def to_dict(self) -> dict:
        return asdict(self)


def output_config(source: DatasetInput, opts: ConvertOptions) -> dict:
    """What decides the output: the input's settings and the options (JSON-normalised)."""
    return json.loads(json.dumps({"input": source.settings(), **opts.to_dict()}))


def convert_dataset(source: DatasetInput, out_dir: str | Path, opts: ConvertOptions,
                    workers: int = 1, stage: str = "all", task_index: int = 0,
                    task_count: int = 1) -> dict:
    """Convert ``source`` into shards under ``out_dir``; returns the manifest.

    ``stage``: ``all`` (convert this task's sources, then write the manifest), ``convert``
    (sources only; returns run counters: a SLURM array task) or ``finalize`` (manifest and
    sizes from the done-markers). ``task_index`` / ``task_count``: this task converts every
    ``task_count``-th selected source. Finished sources are never redone (resume).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    out_dir = Path(out_dir)
    selected = plan(source, opts)
    if stage != "finalize":
        if not 0 <= task_index < task_count:
            raise ValueError(f"task index {task_index} not in [0, {task_count})")
        totals = run_conversion(source, selected[task_index::task_count], opts, out_dir,
                                workers)
        log.info("conversion: %s", totals)
        if stage == "convert":
            return totals
    manifest = finalize(out_dir, selected, output_config(source, opts), source.summary())
    log.info("samples %s in shards %s; %d images skipped %s; complete=%s", manifest["samples"],
             manifest["shards"], len(manifest["skipped"]), manifest["skipped_by_reason"],
             manifest["complete"])
    return manifest


def options_from_config(cfg) -> tuple[DatasetInput, ConvertOptions]:
    """(input, options) from a ``conf/convert.yaml``-shaped mapping (DictConfig or dict)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    opts = ConvertOptions(fraction=plain["sample"]["fraction"], seed=plain["sample"]["seed"],
                          strategy=plain["sample"]["strategy"],
                          val_fraction=plain["val_fraction"],
                          samples_per_shard=plain["samples_per_shard"],
                          folder_chunk=plain["folder_chunk"],
                          record=RecordOptions(**plain["record"]))
    return build_input(plain["input"], chunk=opts.folder_chunk), opts


def convert_from_config(cfg) -> dict:
    """``convert_dataset`` as configured by ``conf/convert.yaml`` (``output``, ``workers``,
    ``stage``, ``task.index`` / ``task.count`` and the options)."""
    source, opts = options_from_config(cfg)
    return convert_dataset(source, cfg["output"], opts, workers=cfg["workers"],
                           stage=cfg["stage"], task_index=cfg["task"]["index"],
                           task_count=cfg["task"]["count"])


def convert_source(source: DatasetInput, unit: Source, opts: ConvertOptions,
                   out_dir: Path) -> dict:
    """Convert one unit into its shards and write its done-marker; returns the marker."""
    _remove_partial(unit, out_dir)
    writers = {s: ShardWriter(out_dir / s / unit.name, opts.samples_per_shard) for s in SPLITS}
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    skipped, errors, drops = [], [], Counter()
    counts = Counter()
    try:
        for item in source.items(unit, errors):
            counts["seen"] += 1
            if not keep_image(item.group, opts.fraction, opts.seed, opts.strategy):
                counts["not_sampled"] += 1
                continue
            try:
                sample = source.to_sample(item, opts.record, drops)
            except SkipImage as skip:
                skipped.append({"id": item.key, "reason": skip.reason, "detail": skip.detail})
                continue
            split = "val" if is_val(item.group, opts.val_fraction, opts.seed) else "train"
            writers[split].write(sample)
            ids[split].append(item.key)
            counts["instances"] += sample["txt"].count(b"\n")
    except SourceError as exc:
        errors.append((exc.reason, str(exc)))
        log.warning("source %s unusable: %s", unit.name, exc)
    for writer in writers.values():
        writer.close()
    for reason, detail in errors:
        skipped.append({"id": unit.name, "reason": reason, "detail": detail})
    marker = {"source": unit.name, "path": str(unit.path), "counts": dict(counts),
              "shards": {s: writers[s].written for s in SPLITS}, "ids": ids,
              "skipped": skipped, "annotation_drops": dict(drops)}
    atomic_write_json(out_dir / "done" / f"{unit.name}.json", marker)
    return marker


def _remove_partial(unit: Source, out_dir: Path) -> None:
    """Delete what a killed run left of this unit (temp files and shards without a marker)."""
    for split in SPLITS:
        folder = out_dir / split
        if folder.is_dir():
            for path in folder.glob(f".{unit.name}-*.tmp*"):
                path.unlink()
            for path in folder.glob(f"{unit.name}-{'[0-9]' * 6}.tar"):
                path.unlink()


_WORKER_INPUT: DatasetInput | None = None  # set in each worker (fork: inherited, not pickled)


def _set_worker_input(source: DatasetInput) -> None:
    global _WORKER_INPUT
    _WORKER_INPUT = source


def _convert_job(args: tuple[Source, ConvertOptions, Path]) -> dict:
    unit, opts, out_dir = args
    return convert_source(_WORKER_INPUT, unit, opts, out_dir)


def plan(source: DatasetInput, opts: ConvertOptions) -> list[Source]:
    """The input's sources that the sample selects (``select_sources``), sorted by name."""
    sources = source.sources()
    chosen = set(select_sources([s.name for s in sources], opts.fraction, opts.seed,
                                opts.strategy))
    return [s for s in sources if s.name in chosen]


def check_config(out_dir: Path, config: dict) -> None:
    """Refuse to resume into an output written with different settings."""
    path = out_dir / "convert_config.json"
    if path.exists():
        if json.loads(path.read_text()) != config:
            raise ValueError(f"{out_dir} was converted with other settings ({path}); "
                             "use a new output directory or the same config")
    else:
        atomic_write_json(path, config)


def run_conversion(source: DatasetInput, units: list[Source], opts: ConvertOptions,
                   out_dir: Path, workers: int) -> dict[str, int]:
    """Convert every unfinished unit with ``workers`` processes; returns run counters.

    Workers are forked with the input already built (a COCO json is parsed once, in the
    parent), and receive only the unit to convert."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(out_dir, output_config(source, opts))
    todo = [s for s in units if not (out_dir / "done" / f"{s.name}.json").exists()]
    log.info("%d sources, %d already done, %d to convert", len(units),
             len(units) - len(todo), len(todo))
    totals = Counter(done_before=len(units) - len(todo))
    jobs = [(s, opts, out_dir) for s in todo]
    bar = tqdm(total=len(jobs), desc="sources", unit="src")
    _set_worker_input(source)
    if workers <= 1:
        _collect(map(_convert_job, jobs), totals, bar)
    else:
        with mp.get_context("fork").Pool(workers, initializer=_set_worker_input,
                                         initargs=(source,), maxtasksperchild=4) as pool:
            _collect(pool.imap_unordered(_convert_job, jobs), totals, bar)
    bar.close()
    return dict(totals)


def _collect(results, totals: Counter, bar: tqdm) -> None:
    for marker in results:
        totals["converted"] += 1
        totals["images"] += sum(len(v) for v in marker["ids"].values())
        totals["skipped"] += len(marker["skipped"])
        bar.update(1)
        bar.set_postfix(images=totals["images"], skipped=totals["skipped"])
