"""Reading BSDS inputs: soft edge maps (PNG) and ground-truth annotations (.mat).

Every failure names the offending file, so a broken prediction directory is easy to fix.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.io import loadmat

__all__ = ["load_edge_map", "load_ground_truth"]


def load_edge_map(path: str | Path) -> np.ndarray:
    """Read an edge map image as float64 (H, W) in [0, 1].

    Matches BSR's ``double(imread(f))/255`` for uint8 PNGs; uint16 images are divided by
    65535. A 3-channel image is accepted only when its channels are equal (a grey PNG
    saved as RGB). Raises FileNotFoundError / ValueError naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edge map not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"not a readable image: {path}")
    if img.ndim == 3:
        if img.shape[2] not in (3, 4) or not (img[..., :3] == img[..., :1]).all():
            raise ValueError(f"edge map must be single-channel (grey), got {img.shape}: {path}")
        img = img[..., 0]
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    raise ValueError(f"edge map must be uint8 or uint16, got {img.dtype}: {path}")


def load_ground_truth(path: str | Path) -> list[np.ndarray]:
    """Read the human boundary maps of one BSDS ``groundTruth/*.mat`` file.

    Returns a list of K bool arrays (H, W), one per annotator (``groundTruth{k}.Boundaries``).
    Raises FileNotFoundError / ValueError naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground truth not found: {path}")
    try:
        cells = loadmat(str(path))["groundTruth"]
        boundaries = [np.asarray(c["Boundaries"][0, 0], dtype=bool) for c in cells.ravel()]
    except Exception as err:  # scipy raises several types for non-.mat or odd layouts
        raise ValueError(f"not a BSDS groundTruth .mat file ({err}): {path}") from err
    if not boundaries or any(b.ndim != 2 or b.shape != boundaries[0].shape for b in boundaries):
        raise ValueError(f"groundTruth holds no consistent 2-D Boundaries maps: {path}")
    return boundaries
