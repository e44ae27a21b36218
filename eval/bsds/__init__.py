"""BSDS500 boundary benchmark (ODS / OIS / AP / R50), a fast re-implementation of BSR's.

Pipeline: soft edge map -> (optional) structured-edges NMS -> 99 thresholds -> thinning ->
pixel matching against every annotator (maxDist = 0.0075 x diagonal) -> per-image counts ->
dataset scores. See ``evaluate.benchmark_dir`` for a directory of PNGs.
"""

from fastsam_train.plots import plot_pr_curves

from .baselines import canny_edges, sobel_edges, to_png
from .counts import (
    ImageCounts,
    evaluate_against,
    evaluate_files,
    evaluate_image,
    read_counts,
    thresholds,
    write_counts,
)
from .evaluate import benchmark_dir, evaluate_dir, list_pairs, write_results
from .io import load_edge_map, load_ground_truth
from .match import match_pixels
from .metrics import BoundaryScores, area_pr, max_f, recall_at_50, summarize, write_bsr_files
from .nms import conv_tri, edge_nms, edge_orientation, gradient2, nms_edges
from .thin import thin

__all__ = [
    "BoundaryScores",
    "ImageCounts",
    "area_pr",
    "benchmark_dir",
    "canny_edges",
    "conv_tri",
    "edge_nms",
    "edge_orientation",
    "evaluate_dir",
    "evaluate_against",
    "evaluate_files",
    "evaluate_image",
    "gradient2",
    "list_pairs",
    "load_edge_map",
    "load_ground_truth",
    "match_pixels",
    "max_f",
    "nms_edges",
    "plot_pr_curves",
    "read_counts",
    "recall_at_50",
    "sobel_edges",
    "summarize",
    "thin",
    "thresholds",
    "to_png",
    "write_bsr_files",
    "write_counts",
    "write_results",
]
