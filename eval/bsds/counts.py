"""Per-image boundary counts of the BSDS benchmark, as BSR's ``evaluation_bdry_image`` makes them.

For each threshold t of a soft edge map: binarise ``pb >= t``, thin it, match it against every
annotator; ``cntR``/``sumR`` count matched / all human boundary pixels summed over annotators,
``cntP``/``sumP`` count predicted pixels matched to any annotator / all predicted pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import load_edge_map, load_ground_truth
from .match import match_pixels
from .nms import nms_edges
from .thin import thin

__all__ = [
    "ImageCounts",
    "thresholds",
    "evaluate_image",
    "evaluate_against",
    "evaluate_files",
    "read_counts",
    "write_counts",
]


@dataclass(frozen=True)
class ImageCounts:
    """Counts of one image; every field is float64 (T,) over the T thresholds."""

    thresholds: np.ndarray
    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray

    def as_array(self) -> np.ndarray:
        """(T, 5) rows ``thr cntR sumR cntP sumP``, the layout of BSR's ``<id>_ev1.txt``."""
        return np.stack([self.thresholds, self.cnt_r, self.sum_r, self.cnt_p, self.sum_p], 1)


def thresholds(nthresh: int) -> np.ndarray:
    """BSR thresholds ``linspace(1/(n+1), 1-1/(n+1), n)``: float64 (n,)."""
    return np.linspace(1.0 / (nthresh + 1), 1.0 - 1.0 / (nthresh + 1), nthresh)


def evaluate_image(
    pb: np.ndarray,
    gts: list[np.ndarray],
    *,
    nthresh: int,
    max_dist: float,
    apply_thin: bool = True,
    exact: bool = True,
    apply_nms: bool = False,
) -> ImageCounts:
    """Counts of soft edge map ``pb`` (H, W) in [0, 1] against annotator maps ``gts`` [(H, W)].

    Matches BSR ``evaluation_bdry_image(pb, gt, nthresh, maxDist, thinpb)`` (and the
    structured-edges ``edgesEvalImg``), with ``match_pixels(exact=exact)`` in place of CSA.
    ``apply_nms`` first runs the structured-edges NMS and the 8-bit rounding of the usual
    ``imwrite(uint8(E*255))`` step, for raw network outputs. Returns ImageCounts over
    ``thresholds(nthresh)``. ``nthresh`` / ``max_dist`` (a fraction of the image diagonal):
    BSR's benchmark uses 99 and 0.0075, the values of conf/task/bsds_edges.yaml.
    """
    if apply_nms:
        pb = np.round(np.clip(nms_edges(pb), 0, 1) * 255) / 255
    thr = thresholds(nthresh)
    counts = np.zeros((4, nthresh))
    sum_gt = float(sum(g.sum() for g in gts))
    for k, t in enumerate(thr):
        bmap = pb >= t
        if apply_thin:
            bmap = thin(bmap)
        matched_any = np.zeros(bmap.shape, dtype=bool)
        for i, gt in enumerate(gts):
            matched_pred, matched_gt = match_pixels(bmap, gt, max_dist, exact=exact, seed=i)
            matched_any |= matched_pred
            counts[0, k] += matched_gt.sum()
        counts[1:, k] = sum_gt, matched_any.sum(), bmap.sum()
    return ImageCounts(thr, *counts)


def evaluate_against(pb: np.ndarray, gt_path: str | Path, source: str | Path,
                     **options) -> ImageCounts:
    """Counts of soft map ``pb`` (H, W) in [0, 1] against the annotators of ``gt_path`` (a
    ``groundTruth`` .mat); ``source`` names the map in the error for a size mismatch.
    ``options``: those of ``evaluate_image``."""
    gts = load_ground_truth(gt_path)
    if pb.shape != gts[0].shape:
        raise ValueError(
            f"edge map {source} has size {pb.shape}, ground truth {gt_path} has {gts[0].shape}"
        )
    return evaluate_image(pb, gts, **options)


def evaluate_files(pred_path: str | Path, gt_path: str | Path, **options) -> ImageCounts:
    """Load a PNG edge map and count it against its ``groundTruth`` .mat (``evaluate_against``;
    ``options`` as for ``evaluate_image``).

    Raises FileNotFoundError / ValueError naming the file for missing, unreadable or
    wrong-sized inputs.
    """
    return evaluate_against(load_edge_map(pred_path), gt_path, pred_path, **options)


def read_counts(path: str | Path) -> ImageCounts:
    """Read a BSR ``<id>_ev1.txt`` file (rows ``thr cntR sumR cntP sumP``)."""
    rows = np.loadtxt(path, ndmin=2)
    if rows.shape[1] != 5:
        raise ValueError(f"expected 5 columns (thr cntR sumR cntP sumP): {path}")
    return ImageCounts(*rows.T.copy())


def write_counts(counts: ImageCounts, path: str | Path) -> None:
    """Write ``counts`` in BSR's ``<id>_ev1.txt`` format."""
    np.savetxt(path, counts.as_array(), fmt="%10g")
