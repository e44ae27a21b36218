"""SA-1B -> webdataset shards: per-source work units, worker processes, resume, manifest.

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

from fastsam_train.data.records import RecordOptions, SkipImage, convert_record
from fastsam_train.data.sa1b import Source, SourceError, discover_sources, iter_pairs
from fastsam_train.data.sampling import is_val, keep_image, select_sources
from fastsam_train.data.shards import ShardWriter, atomic_write_json

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides the output (the worker count and task split do not)."""

    fraction: float = 0.02
    seed: int = 0
    strategy: str = "tars"
    val_fraction: float = 0.005
    samples_per_shard: int = 1000
    folder_chunk: int = 1000  # images per work unit for extracted folders
    record: RecordOptions = field(default_factory=RecordOptions)

    def to_dict(self) -> dict:
        return asdict(self)


def convert_source(source: Source, opts: ConvertOptions, out_dir: Path) -> dict:
    """Convert one source into its shards and write its done-marker; returns the marker."""
    _remove_partial(source, out_dir)
    writers = {s: ShardWriter(out_dir / s / source.name, opts.samples_per_shard) for s in SPLITS}
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    skipped, errors, drops = [], [], Counter()
    counts = Counter()
    try:
        for pair in iter_pairs(source, errors):
            counts["seen"] += 1
            if not keep_image(pair.stem, opts.fraction, opts.seed, opts.strategy):
                counts["not_sampled"] += 1
                continue
            try:
                sample = convert_record(pair, opts.record, drops)
            except SkipImage as skip:
                skipped.append({"id": pair.stem, "reason": skip.reason, "detail": skip.detail})
                continue
            split = "val" if is_val(pair.stem, opts.val_fraction, opts.seed) else "train"
            writers[split].write(sample)
            ids[split].append(pair.stem)
            counts["instances"] += sample["txt"].count(b"\n")
    except SourceError as exc:
        errors.append((exc.reason, str(exc)))
        log.warning("source %s unusable: %s", source.name, exc)
    for writer in writers.values():
        writer.close()
    for reason, detail in errors:
        skipped.append({"id": source.name, "reason": reason, "detail": detail})
    marker = {"source": source.name, "path": str(source.path), "counts": dict(counts),
              "shards": {s: writers[s].written for s in SPLITS}, "ids": ids,
              "skipped": skipped, "annotation_drops": dict(drops)}
    atomic_write_json(out_dir / "done" / f"{source.name}.json", marker)
    return marker


def _remove_partial(source: Source, out_dir: Path) -> None:
    """Delete what a killed run left of this unit (temp files and shards without a marker)."""
    for split in SPLITS:
        folder = out_dir / split
        if folder.is_dir():
            for path in folder.glob(f".{source.name}-*.tmp*"):
                path.unlink()
            for path in folder.glob(f"{source.name}-{'[0-9]' * 6}.tar"):
                path.unlink()


def _convert_job(args: tuple[Source, ConvertOptions, Path]) -> dict:
    source, opts, out_dir = args
    return convert_source(source, opts, out_dir)


def plan(inputs: list[str], opts: ConvertOptions, task_index: int = 0,
         task_count: int = 1) -> list[Source]:
    """Sources this task converts: sampled (``select_sources``), then every task_count-th."""
    if not 0 <= task_index < task_count:
        raise ValueError(f"task index {task_index} not in [0, {task_count})")
    sources = discover_sources(inputs, opts.folder_chunk)
    chosen = set(select_sources([s.name for s in sources], opts.fraction, opts.seed,
                                opts.strategy))
    return [s for s in sources if s.name in chosen][task_index::task_count]


def check_config(out_dir: Path, opts: ConvertOptions) -> None:
    """Refuse to resume into an output written with different settings."""
    path = out_dir / "convert_config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(opts.to_dict())):
            raise ValueError(f"{out_dir} was converted with other settings ({path}); "
                             "use a new output directory or the same config")
    else:
        atomic_write_json(path, opts.to_dict())


def run_conversion(sources: list[Source], opts: ConvertOptions, out_dir: Path,
                   workers: int) -> dict[str, int]:
    """Convert every unfinished source with ``workers`` processes; returns run counters."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(out_dir, opts)
    todo = [s for s in sources if not (out_dir / "done" / f"{s.name}.json").exists()]
    log.info("%d sources, %d already done, %d to convert", len(sources),
             len(sources) - len(todo), len(todo))
    totals = Counter(done_before=len(sources) - len(todo))
    jobs = [(s, opts, out_dir) for s in todo]
    bar = tqdm(total=len(jobs), desc="sources", unit="src")
    if workers <= 1:
        results = map(_convert_job, jobs)
        _collect(results, totals, bar)
    else:
        with mp.get_context("fork").Pool(workers, maxtasksperchild=4) as pool:
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
