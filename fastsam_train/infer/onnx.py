"""ONNX export of the network and an ONNX Runtime stand-in for the PyTorch module.

Only the network is exported (image -> raw predictions, prototypes); NMS and mask assembly stay
in ``postprocess``, shared by both runtimes. The model has a fixed square input (``imgsz``, stored
in the file's metadata) and a dynamic batch axis.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

IMGSZ_KEY = "fastsam_imgsz"


def export_onnx(network: nn.Module, path: str | Path, imgsz: int = 1024, opset: int = 17,
                batch: int = 1) -> Path:
    """Write ``network`` (``weights.build_network``) as ONNX: input ``images`` float
    (B, 3, imgsz, imgsz), outputs ``raw`` (B, 4 + nc + 32, A) and ``proto`` (B, 32, imgsz/4,
    imgsz/4). Uses the TorchScript-based exporter (no onnxscript needed)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.float().cpu().eval()
    example = torch.zeros(batch, 3, imgsz, imgsz)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # expected: the legacy exporter's deprecation notice, and the tracer noting that the
        # head's anchor grid is baked in for this input size (which is why the size is fixed)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        network(example)  # fixes the head's anchors for this input size before tracing
        torch.onnx.export(network, (example,), str(path), input_names=["images"],
                          output_names=["raw", "proto"], opset_version=opset, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "raw": {0: "batch"},
                                        "proto": {0: "batch"}})
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = IMGSZ_KEY, str(imgsz)
    onnx.save(model, str(path))
    return path


class OnnxNetwork:
    """Callable like the PyTorch network: float (B, 3, imgsz, imgsz) -> (raw, proto) tensors."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.session = ort.InferenceSession(
            str(path), providers=list(providers or ["CPUExecutionProvider"]))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.imgsz = int(meta.get(IMGSZ_KEY, self.session.get_inputs()[0].shape[-1]))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[2:]) != (self.imgsz, self.imgsz):
            raise ValueError(f"this ONNX model takes {self.imgsz}x{self.imgsz} inputs, got "
                             f"{tuple(x.shape[2:])}")
        raw, proto = self.session.run(["raw", "proto"], {"images": x.float().cpu().numpy()})
        return torch.from_numpy(raw), torch.from_numpy(proto)
