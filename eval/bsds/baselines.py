"""Classical edge baselines of the paper's Table 2 (Sobel, Canny) as soft maps in [0, 1].

Both return maps ready for the benchmark (``counts.evaluate_image`` / PNGs for
``evaluate.evaluate_dir``): the benchmark thresholds them at 99 levels and thins them.
"""

from __future__ import annotations

import cv2
import numpy as np

from .nms import nms_edges

__all__ = ["sobel_edges", "canny_edges", "to_gray", "to_png"]


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) as cv2 reads it, or grey (H, W) -> float32 grey (H, W) in [0, 1]."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image.astype(np.float32) / 255.0


def sobel_edges(image: np.ndarray, sigma: float = 1.0, nms: bool = True) -> np.ndarray:
    """Sobel gradient magnitude of the Gaussian-smoothed grey image, divided by its maximum.

    image: uint8 (H, W, 3) BGR or (H, W). sigma: pre-smoothing in pixels (0 = none). With
    ``nms`` the structured-edges NMS thins it like the learned detectors. float64 (H, W).
    """
    gray = to_gray(image)
    if sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    mag = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    mag = mag.astype(np.float64) / max(float(mag.max()), 1e-12)
    return nms_edges(mag) if nms else mag


def canny_edges(image: np.ndarray, sigma: float = 2.0, levels: int = 64) -> np.ndarray:
    """Canny over a ladder of thresholds, as a soft map: a pixel's value is the fraction of
    ``levels`` high thresholds (low = 0.4 x high) at which Canny keeps it.

    Thresholding this map at t gives the Canny edges of one high threshold, so the benchmark's
    threshold sweep traces Canny's PR curve. image: uint8 BGR (H, W, 3) or (H, W);
    sigma: Gaussian pre-smoothing. Returns float64 (H, W) in [0, 1].
    """
    gray = to_gray(image)
    if sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigma)
    gray16 = np.round(gray * 255).astype(np.int16)
    dx = cv2.Sobel(gray16, cv2.CV_16S, 1, 0)
    dy = cv2.Sobel(gray16, cv2.CV_16S, 0, 1)
    top = float(np.hypot(dx.astype(np.float32), dy.astype(np.float32)).max())
    soft = np.zeros(gray.shape, np.float64)
    for high in np.linspace(0, top, levels + 1)[1:]:
        soft += cv2.Canny(dx, dy, 0.4 * high, high, L2gradient=True) > 0
    return soft / levels


def to_png(soft: np.ndarray) -> np.ndarray:
    """Soft map in [0, 1] -> uint8 (H, W) as the benchmark reads PNGs (``round(255 x)``)."""
    return np.round(np.clip(soft, 0, 1) * 255).astype(np.uint8)
