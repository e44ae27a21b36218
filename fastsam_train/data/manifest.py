"""Aggregate the per-source done-markers into ``sizes.json`` files and ``manifest.json``.

Idempotent and cheap (it reads only the markers), so it can run after every conversion and
again as the final step of a SLURM array (``stage=finalize``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fastsam_train.data.sa1b import Source
from fastsam_train.data.shards import atomic_write_json

SPLITS = ("train", "val")


def finalize(out_dir: Path, sources: list[Source], config: dict,
             summary: dict | None = None) -> dict:
    """Write ``<split>/sizes.json`` and ``manifest.json``; returns the manifest.

    ``config``: what decided the output (input settings + conversion options). ``summary``:
    the input's additions (``categories``: class id -> name map when categories are kept;
    ``annotation_drops``: annotations dropped while indexing, e.g. an image id missing from a
    COCO json's images), merged in. ``complete`` is False while some selected source has no
    marker yet (e.g. array tasks still running); the sizes then list only finished shards.
    """
    summary = dict(summary or {})
    markers, pending = [], []
    for source in sources:
        path = out_dir / "done" / f"{source.name}.json"
        if path.exists():
            markers.append(json.loads(path.read_text()))
        else:
            pending.append(source.name)
    sizes = {s: {name: n for m in markers for name, n in m["shards"][s]} for s in SPLITS}
    for split in SPLITS:
        atomic_write_json(out_dir / split / "sizes.json", sizes[split])
    drops = Counter(summary.pop("annotation_drops", {}))
    skip_reasons = Counter()
    for marker in markers:
        drops.update(marker["annotation_drops"])
        skip_reasons.update(item["reason"] for item in marker["skipped"])
    manifest = {
        "complete": not pending,
        "pending_sources": pending,
        "config": config,
        "sources": [{"name": m["source"], "path": m["path"], "counts": m["counts"]}
                    for m in markers],
        "samples": {s: sum(sizes[s].values()) for s in SPLITS},
        "shards": {s: len(sizes[s]) for s in SPLITS},
        "instances": sum(m["counts"].get("instances", 0) for m in markers),
        "skipped_by_reason": dict(skip_reasons),
        "annotation_drops": dict(drops),
        "skipped": [item for m in markers for item in m["skipped"]],
        "ids": {s: sorted(i for m in markers for i in m["ids"][s]) for s in SPLITS},
        **summary,
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
