"""What an evaluation leaves behind: metrics JSON, a Markdown table beside the paper's numbers,
the AR-vs-#proposals plot (FastSAM Figure 5), the raw predictions (RLE) for re-evaluation, and
the same metrics on any configured Lightning logger (wandb offline works without a login).

Paper rows (percent) are transcribed from the paper text in ``../shared/paper/``
(``fastsam_arxiv_2306.12156.txt``, an OCR of arXiv:2306.12156v1), Tables 3-6, cell by cell.
That text is cut in places; such cells say so instead of holding a number: ``CUT`` (no number
there), ``"32.…"`` (only the leading digits survive), ``—`` (the paper prints a dash, or the
table has no such column).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from eval.core import Prediction, to_prediction
from fastsam_train.io import atomic_write_json, atomic_write_text
from fastsam_train.plots import plot_ar_curves

log = logging.getLogger(__name__)

DASH = "—"
CUT = "cut in text"
SIZES = [("all", "ar_1000"), ("small", "ar_s_1000"), ("med.", "ar_m_1000"),
         ("large", "ar_l_1000"), ("freq.", "ar_f_1000"), ("com.", "ar_c_1000"),
         ("rare", "ar_r_1000")]
SOURCES = ("paper rows: the FastSAM paper (arXiv:2306.12156v1) Tables 3-6 as they read in "
           "../shared/paper/fastsam_arxiv_2306.12156.txt. \"cut in text\": the text has no "
           "number for that cell (it is cut off there); \"32.…\": only the leading digits "
           "survive; — : the paper prints a dash, or its table has no such column.")

BOTH = [("ours (box)", "box"), ("ours (mask)", "mask")]
MASK = [("ours", "mask")]

# task -> tables: (title, [(column, metric suffix)], {method: percent / marker}, our rows)
PAPER: dict[str, list[tuple[str, list, dict[str, list], list]]] = {
    "coco_ar": [
        ("COCO val2017: class-agnostic box proposals (FastSAM Table 3)",
         [("AR10", "ar_10"), ("AR100", "ar_100"), ("AR1000", "ar_1000"), ("AUC", "auc")],
         {"EdgeBoxes": [7.4, 17.8, 33.8, "13.…"],  # the text reads "74": its AR10 lost a point
          "Geodesic": [4.0, 18.0, 35.9, "12.…"],
          "Sel.Search": [5.2, 16.3, 35.7, "12.…"],
          "MCG": [10.1, 24.6, 39.8, "18.…"],
          "DeepMask": [13.9, 28.6, 43.1, "21.…"],
          "OLN-Box": [27.7, 46.1, 55.7, "34.…"],
          "SAM-H E64": [15.5, 45.6, 67.7, "32.…"], "SAM-H E32": [18.5, 49.5, 62.5, "33.…"],
          "SAM-B E32": [11.4, 39.6, 59.1, "27.…"], "FastSAM": [15.7, 47.3, 63.7, "32.…"]},
         BOTH),
        ("COCO val2017: AR@1000 by object size (not in the paper)", SIZES[:4], {}, BOTH),
    ],
    "lvis_ar": [
        ("LVIS v1 val: box AR@1000 (FastSAM Table 4)", SIZES,
         {"ViTDet-H": [65.0, 53.2, 83.3, CUT, DASH, DASH, DASH],
          "SAM-H E64": [52.1, 36.6, 75.1, "88.…", DASH, DASH, DASH],
          "SAM-H E32": [50.3, 33.1, 76.2, "89.…", DASH, DASH, DASH],
          "SAM-B E32": [45.0, 29.3, 68.7, "80.…", DASH, DASH, DASH],
          "FastSAM": [57.1, 44.3, 77.1, "85.…", DASH, DASH, DASH]}, [("ours", "box")]),
        ("LVIS v1 val: mask AR@1000 (FastSAM Table 5; the authors' replication)", SIZES,
         {"rows quoted from SAM's paper": [CUT] * 7,
          "ViTDet-H": [59.9, 48.3, 78.1, 84.8, DASH, DASH, CUT],
          "SAM-H E64": [54.2, 39.6, 77.9, "83.…", CUT, CUT, CUT],
          "SAM-H E32": [51.8, 35.2, 78.7, 85.2, DASH, DASH, CUT],
          "SAM-B E32": [45.8, 31.1, 70.5, 73.6, DASH, DASH, CUT],
          "FastSAM": [49.7, 35.6, 72.7, 77.6, DASH, DASH, CUT]}, MASK),
    ],
    "coco_instance": [
        ("COCO val2017: instance segmentation from ViTDet-H boxes (FastSAM Table 6)",
         [("AP", "ap"), ("APS", "ap_s"), ("APM", "ap_m"), ("APL", "ap_l"), ("AP50", "ap50"),
          ("AP75", "ap75")],
         {"ViTDet-H (its own masks)": [51.0, 32.0, 54.3, 68.9, DASH, DASH],
          "SAM": [46.5, 30.8, 51.0, 61.7, DASH, DASH],
          "FastSAM": [37.9, 23.9, 43.4, 50.0, DASH, DASH]}, MASK),
    ],
    "lvis_instance": [
        ("LVIS v1 val: instance segmentation from ViTDet-H boxes (FastSAM Table 6; LVIS API, "
         "300 dets/image)",
         [("AP", "ap"), ("APS", "ap_s"), ("APM", "ap_m"), ("APL", "ap_l"), ("APr", "ap_r"),
          ("APc", "ap_c"), ("APf", "ap_f")],
         {"ViTDet-H (its own masks)": [46.6, 35.0, 58.0, "66.…", DASH, DASH, DASH],
          "SAM": [44.7, 32.5, 57.6, "65.…", DASH, DASH, DASH],
          "FastSAM": [34.5, 24.6, 46.2, "50.…", DASH, DASH, DASH]}, MASK),
    ],
}
PAPER["bsds_ar"] = [  # no published numbers: the bsds_mini reproduction's own benchmark
    ("BSDS500 test: class-agnostic proposals vs human regions (median annotator)",
     [("AR10", "ar_10"), ("AR100", "ar_100"), ("small", "ar_s_100"), ("med.", "ar_m_100"),
      ("large", "ar_l_100")], {}, BOTH)]
PAPER_CURVE = {"coco_ar": ("box", {10: 15.7, 100: 47.3, 1000: 63.7})}


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.1f}"


def model_line(info: dict) -> str:
    """The model sentence of a report: which model, which weights, which mask protocol."""
    if "model" not in info:
        return ""
    extra = f" ({info['sam_type']})" if info.get("sam_type") else ""
    return (f"Model: {info['model']}{extra}, weights `{info.get('weights', '?')}`; mask "
            f"protocol: **{info.get('mask_protocol', '?')}**.")


def markdown(task: str, metrics: dict[str, float], info: dict) -> str:
    """The paper's table(s) for ``task`` with our row(s) (metrics are fractions) underneath;
    ``info["rows"]`` (label, metric prefix) replaces the task's default rows."""
    lines = [f"# {task}: {info.get('dataset', '')}", "",
             f"{int(metrics.get('images', 0))} of {info.get('dataset_images', '?')} images of "
             f"`{info.get('annotation', '?')}`; predictions: `{info.get('source', '?')}`", "",
             model_line(info), ""]
    for title, columns, rows, ours in PAPER[task]:
        lines += [f"## {title}", "", "| method | " + " | ".join(c for c, _ in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {name} (paper) | " + " | ".join(_cell(v) for v in values) + " |"
                  for name, values in rows.items()]
        for name, prefix in info.get("rows") or ours:
            values = [metrics.get(f"{prefix}/{key}") for _, key in columns]
            lines.append(f"| **{name}** | " + " | ".join(
                _cell(None if v is None else 100 * v) for v in values) + " |")
        lines.append("")
    sources = [f"Sources: {SOURCES}"] if any(rows for _, _, rows, _ in PAPER[task]) else []
    return "\n".join(lines + sources + [""])


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(out_dir: str | Path, task: str, metrics: dict[str, float],
                 curves: dict[str, tuple] | None = None, info: dict | None = None
                 ) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and (with curves) ``ar_curve.png``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = info or {}
    payload = {"task": task, **info, "metrics": {k: _json_safe(v) for k, v in metrics.items()},
               "curves": {p: {"k": [int(k) for k in ks], "ar": [_json_safe(float(a)) for a in ar]}
                          for p, (ks, ar) in (curves or {}).items()},
               "paper": {title: rows for title, _, rows, _ in PAPER[task]}}
    paths = {"metrics": out / "metrics.json", "markdown": out / "report.md"}
    atomic_write_json(paths["metrics"], payload, indent=2)
    atomic_write_text(paths["markdown"], markdown(task, metrics, info))
    if curves:
        paths["plot"] = plot_ar_curves(curves, out / "ar_curve.png", task,
                                        paper=PAPER_CURVE.get(task))
    return paths


class PredictionWriter:
    """An evaluator that streams every image's proposals to ``predictions.jsonl.gz`` for
    ``read_predictions``: one JSON line per image (id, size, scores, xyxy boxes, RLE counts),
    each line its own gzip member, written and flushed at once.

    As an ``ImageEvaluator`` (eval/core.py) its per-image result is the file's length after the
    image: a resumed run cuts off whatever was written after the last logged image and appends.
    """

    def __init__(self, path: str | Path) -> None:
        self.path, self._file, self._end = Path(path), None, 0

    def reset(self) -> None:
        self.close()
        self._end = 0

    def process(self, inputs: Sequence[dict], outputs: Sequence[Prediction]) -> None:
        for pred in outputs:
            self.add_result(pred.image_id, self.image_result({"id": pred.image_id}, pred))

    def image_result(self, image: dict, pred: Prediction) -> dict[str, np.ndarray]:
        line = json.dumps({"image_id": pred.image_id, "height": pred.height,
                           "width": pred.width, "scores": pred.scores.tolist(),
                           "boxes": pred.boxes.tolist(),
                           "counts": [r["counts"] for r in pred.rles]})
        data = gzip.compress(line.encode() + b"\n", compresslevel=1, mtime=0)
        f = self._open()
        f.write(data)
        f.flush()
        return {"end": np.int64(f.tell())}

    def add_result(self, image_id: int, result: dict[str, np.ndarray]) -> None:
        self._end = int(result["end"])

    def _open(self):
        """The file, opened at the end of the last added image (anything after it cut off)."""
        if self._file is None:
            size = self.path.stat().st_size if self.path.is_file() else 0
            if size < self._end:
                raise ValueError(
                    f"{self.path} has {size} bytes but the per-image log says {self._end} were "
                    "written: the file was changed or lost. Resume with save_predictions=false "
                    "or start a new run folder")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "r+b" if size else "wb")
            self._file.truncate(self._end)
            self._file.seek(self._end)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def evaluate(self) -> dict[str, float]:
        self._open()  # a resumed run with nothing left to predict still drops a stale tail
        self.close()
        return {}


def read_predictions(path: str | Path, images: dict[int, dict], max_dets: int | None = None,
                     only: set[int] | None = None) -> Iterator[tuple[dict, Prediction]]:
    """(image record, Prediction) for each line of a ``PredictionWriter`` file; ``images`` maps
    the dataset's ids to records, ``only`` (optional) selects some of them. An id the dataset
    does not have, or a size that differs from its record, raises ValueError. A file that ends
    in a torn record (a run killed while writing) is read up to it, with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    for row in _json_lines(path):
        image = images.get(row["image_id"])
        if image is None:
            raise ValueError(f"{path}: image id {row['image_id']} is not in the dataset "
                             "(predictions made for another split?)")
        if only is not None and image["id"] not in only:
            continue
        size = [image["height"], image["width"]]
        if [row["height"], row["width"]] != size:
            raise ValueError(f"{path}: image {row['image_id']} is {row['height']}x"
                             f"{row['width']} there but {size[0]}x{size[1]} in the dataset")
        output = {"scores": np.array(row["scores"]),
                  "boxes": np.array(row["boxes"]).reshape(-1, 4),
                  "rles": [{"size": size, "counts": c} for c in row["counts"]]}
        yield image, to_prediction(image, output, max_dets)


def _json_lines(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    count = 0
    with opener(path, "rt") as f:
        while True:
            try:
                line = f.readline()
            except EOFError:  # a gzip member cut short
                line = ""
                log.warning("%s ends in a torn record (an interrupted run?); read the %d images "
                            "before it", path, count)
            if not line:
                return
            try:
                row = json.loads(line)
            except ValueError:
                if line.endswith("\n") or f.readline():
                    raise  # damaged in the middle: not an interrupted write
                log.warning("%s ends in a torn line; read the %d images before it", path, count)
                return
            count += 1
            yield row


def log_metrics(loggers: list, task: str, metrics: dict[str, float],
                files: dict[str, Path]) -> None:
    """Send ``<task>/<metric>`` to every Lightning logger; wandb also gets every PNG of
    ``files`` (plots, example maps) as ``<task>/<file stem>``."""
    flat = {f"{task}/{k}": v for k, v in metrics.items() if not math.isnan(v)}
    for logger in loggers:
        logger.log_metrics(flat, step=0)
        run = None
        if type(logger).__name__ == "WandbLogger":
            import wandb

            run = logger.experiment
            run.log({f"{task}/{path.stem}": wandb.Image(str(path))
                     for path in files.values() if Path(path).suffix == ".png"})
            run.summary.update(flat)
        logger.finalize("success")
        if run is not None:
            run.finish()  # an evaluation is one run: a later logger must not reuse it
