"""A weights-only file must never choose code: every field read from it is validated.

ultralytics ``eval``s the ``activation`` string of a model YAML; an ``arch`` read from a file
that could point at any YAML would run code from that YAML. Only packaged architecture names,
known scales and bounded integers are accepted."""

from __future__ import annotations

import pytest
import torch

from fastsam_train import ultra
from fastsam_train.cli import main as cli_main
from fastsam_train.infer.weights import WEIGHTS_FORMAT, build_network, read_weights


@pytest.fixture
def evil_yaml(tmp_path):
    """A model YAML whose activation would create ``marker`` when evaluated."""
    marker = tmp_path / "pwned"
    yaml_text = (ultra.ROOT / "cfg" / "models" / "v8" / "yolov8-seg.yaml").read_text()
    path = tmp_path / "evil" / "yolov8-seg.yaml"
    path.parent.mkdir()
    path.write_text(yaml_text + f"\nactivation: __import__('pathlib').Path('{marker}').touch()"
                                "  or __import__('torch').nn.SiLU()\n")
    return path, marker


def weights_file(tmp_path, config: dict, name="w.pt", lightning=False):
    state = ultra.build_model("n").state_dict()
    if lightning:
        obj = {"state_dict": {f"model.{k}": v for k, v in state.items()},
               "hyper_parameters": {"model": config, "hyp": {}}}
    else:
        obj = {"format": WEIGHTS_FORMAT, "config": config, "state_dict": state}
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("lightning", [False, True])
def test_arch_path_from_file_runs_no_code(tmp_path, evil_yaml, lightning):
    yaml_path, marker = evil_yaml
    for arch in (str(yaml_path.with_suffix("")), f"../../../../../../{yaml_path.with_suffix('')}",
                 "yolov8-seg/../../../../" + str(yaml_path.with_suffix(""))):
        path = weights_file(tmp_path, {"arch": arch, "scale": "n", "nc": 1, "reg_max": 26},
                            lightning=lightning)
        with pytest.raises(ValueError, match="not a packaged architecture"):
            build_network(read_weights(path))
        assert cli_main(["predict", str(tmp_path / "none.jpg"), "--weights", str(path),
                         "--out", str(tmp_path / "out")]) == 2
        assert cli_main(["export-onnx", "--weights", str(path), "--out",
                         str(tmp_path / "x.onnx")]) == 2
    assert not marker.exists()
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("scale", "../x", "scale"), ("scale", 3, "scale"), ("nc", 0, "nc"), ("nc", "1", "nc"),
    ("nc", True, "nc"), ("reg_max", 10**9, "reg_max"), ("reg_max", 2.5, "reg_max"),
    ("prototypes", -1, "prototypes"), ("yaml_file", "/etc/passwd", "unknown model config keys"),
])
def test_every_config_field_is_validated(tmp_path, field, value, message):
    config = {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26, field: value}
    with pytest.raises(ValueError, match=message):
        read_weights(weights_file(tmp_path, config))


def test_config_and_state_dict_types_are_checked(tmp_path):
    torch.save({"format": WEIGHTS_FORMAT, "config": ["yolov8-seg"], "state_dict": {}},
               tmp_path / "a.pt")
    with pytest.raises(ValueError, match="must be a mapping"):
        read_weights(tmp_path / "a.pt")
    torch.save({"format": WEIGHTS_FORMAT, "config": {"scale": "n"}, "state_dict": {"a": 1}},
               tmp_path / "b.pt")
    with pytest.raises(ValueError, match="not a mapping of names to tensors"):
        read_weights(tmp_path / "b.pt")


def test_valid_file_still_loads(tmp_path):
    path = weights_file(tmp_path, {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26})
    weights = read_weights(path)
    assert weights.config == {"arch": "yolov8-seg", "scale": "n", "nc": 1, "reg_max": 26,
                              "prototypes": 32}
    raw, proto = build_network(weights)(torch.rand(1, 3, 64, 64))
    assert raw.shape[1] == 4 + 1 + 32 and proto.shape[1] == 32
