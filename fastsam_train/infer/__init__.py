"""FastSAM inference (stage 2 of the paper): everything mode, then point / box / text prompts.

* ``Predictor`` (``predictor.py``): loads weights, runs batches, selects masks by prompt.
* ``weights.py``: Lightning ``.ckpt``, weights-only files, ultralytics ``.pt`` (opt-in pickle).
* ``geometry.py``: letterbox and its exact inverse, masks from prototypes at native resolution.
* ``postprocess.py``: NMS, border snapping, ``Segmentation`` results.
* ``prompts.py``: pure selection functions (points, boxes, text scores).
* ``text.py``: CLIP crops and scoring; ``output.py``: RLE JSON, PNG overlay; ``onnx.py``.
"""

from fastsam_train.infer.postprocess import Segmentation
from fastsam_train.infer.predictor import ImageReadError, PredictOptions, Predictor, read_image
from fastsam_train.infer.prompts import PromptError
from fastsam_train.infer.weights import (
    PickleRequiredError,
    Weights,
    build_network,
    read_weights,
    save_weights,
)

__all__ = [
    "ImageReadError", "PickleRequiredError", "PredictOptions", "Predictor", "PromptError",
    "Segmentation", "Weights", "build_network", "read_image", "read_weights", "save_weights",
]  # fmt: skip
