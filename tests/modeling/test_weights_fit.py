"""Weights that do not fit MODEL.NAME: the one-line error says which registered architecture they fit."""
import os
import time

import pytest
import torch

from configs import load_config
from modeling import build_authorization_model, build_model
from modeling.build import fitting_agw_settings
from utils.errors import CheckpointError


def save_untrained(tmp_path, name, gem="on"):
    cfg = load_config("", ["MODEL.NAME", name, "MODEL.GENERALIZED_MEAN_POOL", gem])
    path = os.path.join(tmp_path, f"{name}_{gem}.pth")
    torch.save(build_model(cfg, num_classes=3).state_dict(), path)  # the classifier too, as training saves it
    return path


def load_error(path, *opts):
    cfg = load_config("", list(opts))
    with pytest.raises(CheckpointError) as info:
        build_authorization_model(cfg, path, "cpu")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_mobilenet_file_under_the_default_name_is_told_its_name(tmp_path):
    path = save_untrained(tmp_path, "mobilenet_v2")
    state_before = torch.random.get_rng_state()
    started = time.perf_counter()
    message = load_error(path)  # MODEL.NAME resnet50_nl, the default
    assert message.startswith(f"{path}: weights do not fit the AGW Baseline with MODEL.NAME resnet50_nl: ")
    assert message.endswith("; they fit MODEL.NAME mobilenet or mobilenet_v2")
    assert time.perf_counter() - started < 30
    assert torch.equal(torch.random.get_rng_state(), state_before)
    build_authorization_model(load_config("", ["MODEL.NAME", "mobilenet_v2"]), path, "cpu")  # the hint works


def test_the_pooling_switch_is_named_when_only_gem_differs(tmp_path):
    path = save_untrained(tmp_path, "mobilenet_v2", gem="off")
    message = load_error(path, "MODEL.NAME", "mobilenet_v2")
    assert message.endswith("; they fit MODEL.NAME mobilenet or mobilenet_v2 with MODEL.GENERALIZED_MEAN_POOL off")
    assert fitting_agw_settings(torch.load(path)) == [("mobilenet", False), ("mobilenet_v2", False)]


def test_weights_of_no_agw_backbone_say_so(tmp_path):
    path = os.path.join(tmp_path, "other.pth")
    torch.save({"base.conv.weight": torch.zeros(4, 3, 3, 3), "bottleneck.weight": torch.ones(4)}, path)
    message = load_error(path, "MODEL.NAME", "mobilenet_v2")
    assert message.endswith("; they fit none of the AGW backbones (MODEL.NAME); a torchreid or fast-reid file "
                            "needs MODEL.FORMAT torchreid|fastreid (or auto)")
