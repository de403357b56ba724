"""Reading every accepted checkpoint layout, strict loading with grouped reports, conversion."""
import copy
import logging
import pickle
import struct
import subprocess
import sys
import types
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import REPO, model_cfg
from torch import nn

from configs import ConfigError
from modeling import (
    Baseline,
    CheckpointError,
    build_authorization_model,
    build_model,
    convert_checkpoint,
    load_imagenet_backbone,
    load_reid_weights,
    read_checkpoint,
    resolve_device,
)
from modeling.backbones.resnet import Bottleneck
from modeling.backbones.resnet_nl import ResNetNL
from modeling.layers import GeneralizedMeanPooling, Non_local
from modeling.safe_unpickle import ModuleRecord, load_untrusted

REPO_ROOT = Path(REPO)
REFERENCE_NAMES = {
    Baseline: ("modeling.baseline", "Baseline"),
    ResNetNL: ("modeling.backbones.resnet_nl", "ResNetNL"),
    Bottleneck: ("modeling.backbones.resnet", "Bottleneck"),
    Non_local: ("modeling.layer.non_local", "Non_local"),
    GeneralizedMeanPooling: ("modeling.layer.gem_pool", "GeneralizedMeanPoolingP"),
}


def features(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.fixture(scope="module")
def trained():
    """A stand-in for a trained AGW: random weights, non-trivial BN statistics and NL blocks."""
    model = build_model(model_cfg(INIT_SEED=11), num_classes=5)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "W.1.weight", "W.1.bias")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        model.global_pool.p.fill_(3.4)
    images = torch.randn(2, 3, 64, 32, generator=generator)
    return model, images, features(model, images)


@pytest.fixture
def fresh():
    return build_model(model_cfg(INIT_SEED=99))


@contextmanager
def reference_module_names():
    """Make our classes pickle under the reference AGW module paths, then remove those paths."""
    fake_modules, renamed = {}, {}
    for cls, (module_name, class_name) in REFERENCE_NAMES.items():
        fake = fake_modules.setdefault(module_name, types.ModuleType(module_name))
        renamed[cls] = type(class_name, (cls,), {"__module__": module_name, "__qualname__": class_name})
        setattr(fake, class_name, renamed[cls])
    saved = {name: sys.modules.get(name) for name in fake_modules}
    sys.modules.update(fake_modules)
    try:
        yield renamed
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


def save_reference_whole_module(model, path, legacy, wrap=None, prepare=None):
    """torch.save of the whole module as the old ignite ModelCheckpoint did, reference class names.

    ``prepare(copy)`` may change the copy that is saved (the deep copy gives every tensor its own
    storage, so views into one storage must be made after it).
    """
    copied = copy.deepcopy(model)
    if prepare is not None:
        prepare(copied)
    with reference_module_names() as renamed, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy saving cannot find source code of the renamed classes
        for module in copied.modules():
            if type(module) in renamed:
                module.__class__ = renamed[type(module)]
        obj = wrap(copied) if wrap else copied
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def released_file(trained, tmp_path_factory):
    """A full-size AGW file in the released layout: whole module, legacy torch format."""
    path = tmp_path_factory.mktemp("released") / "market1501_resnet50_nl_model_120.pth"
    return save_reference_whole_module(trained[0], path, legacy=True)


def tiny_reference_model():
    """Same module classes as AGW at a size that keeps file tests fast."""
    generator = torch.Generator().manual_seed(3)
    model = Baseline(nn.Sequential(Bottleneck(16, 4), Non_local(16)), num_classes=3, in_planes=16)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(0.5 + 0.5 * torch.rand(tensor.shape, generator=generator))
    return model.eval(), torch.randn(2, 16, 6, 4, generator=generator)


def test_released_layout_gives_identical_features(trained, fresh, released_file):
    model, images, expected = trained
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(released_file, map_location="cpu", weights_only=True)  # torch's safe loader refuses it
    state = read_checkpoint(released_file)
    assert list(state) == list(model.state_dict())
    report = load_reid_weights(fresh, state)
    assert report.ignored == ["classifier.weight"] and not report.unexpected and not report.missing
    assert torch.equal(features(fresh, images), expected)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("wrap", [None, nn.DataParallel], ids=["bare", "data_parallel"])
def test_whole_module_formats_give_identical_features(tmp_path, legacy, wrap):
    model, images = tiny_reference_model()
    path = save_reference_whole_module(model, tmp_path / "whole.pth", legacy, wrap)
    state = read_checkpoint(path)
    assert list(state) == list(model.state_dict())
    copy_model = _zeroed_tiny_model()
    load_reid_weights(copy_model, state)
    assert torch.equal(features(copy_model, images), features(model, images))


def _variants(state):
    yield "plain", state
    yield "state_dict entry", {"state_dict": state, "epoch": 120}
    yield "model entry", {"model": state, "optimizer": {"lr": 1e-3}}
    yield "module prefix", OrderedDict((f"module.{k}", v) for k, v in state.items())
    compiled = OrderedDict((f"module._orig_mod.{k}", v) for k, v in state.items())
    yield "compiled in DataParallel", {"state_dict": compiled}


def _zeroed_tiny_model():
    model, _ = tiny_reference_model()
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.zero_()
    return model


def test_state_dict_layouts_give_identical_features(tmp_path):
    model, images = tiny_reference_model()
    state, expected = model.state_dict(), features(model, images)
    for name, content in _variants(state):
        path = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(content, path)
        read = read_checkpoint(path)
        assert list(read) == list(state), name
        target = _zeroed_tiny_model()
        load_reid_weights(target, path)
        assert torch.equal(features(target, images), expected), name


def test_build_authorization_model_is_frozen_and_ignores_imagenet(trained, released_file, tmp_path, caplog):
    model, images, expected = trained
    path = released_file
    cfg = model_cfg(INIT_SEED=0, PRETRAIN_CHOICE="imagenet", PRETRAIN_PATH=str(tmp_path / "no_imagenet.pth"))
    with caplog.at_level(logging.INFO):
        authorization = build_authorization_model(cfg, str(path), "cpu")
    assert not authorization.training
    assert not any(p.requires_grad for p in authorization.parameters())
    assert torch.equal(authorization(images), expected)
    assert f"{path}: loaded 389 tensors, ignored 1 (classifier)" in caplog.text


def test_device_names_resolve():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="MODEL.DEVICE: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        resolve_device("gpu0")


def test_without_checkpoint_the_model_is_the_seeded_random_one(caplog):
    cfg = model_cfg(INIT_SEED=4)
    with caplog.at_level(logging.WARNING):
        untrained = build_authorization_model(cfg, "", "cpu")
    reference = build_model(cfg).state_dict()
    assert all(torch.equal(reference[k], v) for k, v in untrained.state_dict().items())
    assert "not Re-ID trained" in caplog.text


def _error_text(model, state):
    with pytest.raises(CheckpointError, match="weights do not fit the model") as info:
        load_reid_weights(model, state)
    return str(info.value)


def test_missing_keys_are_grouped_by_prefix(trained, fresh):
    full = trained[0].state_dict()

    def without(prefix):
        return OrderedDict((k, v) for k, v in full.items() if not k.startswith(prefix))

    layer3 = [k for k in full if k.startswith("base.layer3.") and not k.endswith("num_batches_tracked")]
    assert f"base.layer3: {len(layer3)} missing" in _error_text(fresh, without("base.layer3."))
    assert "global_pool: 1 missing" in _error_text(fresh, without("global_pool.p"))
    assert "bottleneck: 4 missing" in _error_text(fresh, without("bottleneck."))


def test_wrong_shapes_are_errors_with_both_shapes(trained, fresh):
    state = OrderedDict(trained[0].state_dict())
    state["bottleneck.weight"] = torch.ones(10)
    text = _error_text(fresh, state)
    assert "bottleneck: 1 wrong shape" in text
    assert "bottleneck.weight: checkpoint (10,) vs model (2048,)" in text


def test_non_local_checkpoint_into_plain_resnet_is_refused(trained):
    plain = build_model(model_cfg(INIT_SEED=0, NAME="resnet50"))
    text = _error_text(plain, trained[0].state_dict())
    assert "base.NL_2: 26 unexpected" in text and "base.NL_3: 39 unexpected" in text
    average = build_model(model_cfg(INIT_SEED=0, GENERALIZED_MEAN_POOL="off"))
    assert "global_pool: 1 unexpected" in _error_text(average, trained[0].state_dict())


def test_classifier_of_another_size_is_ignored(trained):
    state = trained[0].state_dict()
    with_classifier = build_model(model_cfg(INIT_SEED=0), num_classes=751)
    report = load_reid_weights(with_classifier, state)
    assert report.ignored == ["classifier.weight"] and with_classifier.classifier.weight.shape == (751, 2048)
    loaded = with_classifier.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state if k != "classifier.weight")


def test_imagenet_report_ignores_fc_and_keeps_non_local_at_init(fresh, tmp_path):
    imagenet = build_model(model_cfg(INIT_SEED=1, NAME="resnet50")).base.state_dict()
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet, path)
    report = load_imagenet_backbone(fresh, path)
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert len(report.kept_initial) == 60 and len(report.loaded) == 318
    assert "NL_3: 36 kept at initialisation" in report.summary()
    imagenet["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 3, 3)
    torch.save(imagenet, path)
    with pytest.raises(CheckpointError, match=r"layer4.0.conv1.weight: checkpoint \(512, 1024, 3, 3\)"):
        load_imagenet_backbone(fresh, path)


def test_unreadable_files_name_the_file(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError, match=f"{missing}: checkpoint file not found"):
        read_checkpoint(missing)
    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint at all\n")
    with pytest.raises(CheckpointError, match=f"{text_file}: .*not a .*checkpoint"):
        read_checkpoint(text_file)
    no_weights = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "mAP": 0.5}, no_weights)
    with pytest.raises(CheckpointError, match="no weights found.*'epoch', 'mAP'"):
        read_checkpoint(no_weights)


def _convert_cli(src, dst, cwd):
    command = [sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), str(src), str(dst)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_convert_tool_round_trip(tmp_path):
    model, _ = tiny_reference_model()
    src = save_reference_whole_module(model, tmp_path / "released.pth", legacy=True)
    dst = tmp_path / "converted" / "agw_state_dict.pth"
    run = _convert_cli(src, dst, tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"wrote {len(model.state_dict())} tensors to {dst}" in run.stdout
    converted = torch.load(dst, map_location="cpu", weights_only=True)
    expected = model.state_dict()
    assert list(converted) == list(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]

    failed = _convert_cli(tmp_path / "nope.pth", dst, tmp_path)
    assert failed.returncode == 2 and "nope.pth: checkpoint file not found" in failed.stderr


def test_convert_function_keeps_classifier(tmp_path):
    state = tiny_reference_model()[0].state_dict()
    src = tmp_path / "src.pth"
    torch.save({"state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items())}, src)
    written = convert_checkpoint(src, tmp_path / "dst.pth")
    assert "classifier.weight" in written and list(written) == list(state)


# ------------------------------------------------------------------------------------------------
# Tensors that are views into ONE storage: the storage offset and strides of every tensor count.
# ------------------------------------------------------------------------------------------------
def shared_storage_tensors():
    """Views at different offsets, with non-contiguous strides, of one float and one int storage."""
    big = torch.arange(60, dtype=torch.float32) * 0.5 - 7.0  # every element distinct
    grid = big[:48].view(6, 8)
    ints = torch.arange(24, dtype=torch.int64).mul_(3).view(4, 6)
    return OrderedDict(
        whole=big,
        head=big[:5],
        middle=big[17:29],
        block=grid[1:4, 2:7],
        column=grid[:, 5],
        transposed=grid[2:, :3].t(),
        stepped=big[3::7],
        int_block=ints[1:, 2:5],
        int_row=ints[3],
    )


EXPECTED_LAYOUT = {  # name -> (storage offset, strides) as torch.save keeps them
    "whole": (0, (1,)), "head": (0, (1,)), "middle": (17, (1,)), "block": (10, (8, 1)),
    "column": (5, (8,)), "transposed": (16, (1, 8)), "stepped": (3, (7,)),
    "int_block": (8, (6, 1)), "int_row": (18, (1,)),
}


def assert_same_views(loaded, saved):
    assert list(loaded) == list(saved)
    for name, tensor in saved.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name
        assert (loaded[name].storage_offset(), loaded[name].stride()) == EXPECTED_LAYOUT[name], name
    # One storage per saved storage, as torch.load gives: the views share memory.
    float_storages = {loaded[n].untyped_storage().data_ptr() for n in saved if saved[n].is_floating_point()}
    int_storages = {loaded[n].untyped_storage().data_ptr() for n in ("int_block", "int_row")}
    assert len(float_storages) == 1 and len(int_storages) == 1


def test_expected_layout_is_what_torch_saves():
    saved = shared_storage_tensors()
    assert {n: (t.storage_offset(), t.stride()) for n, t in saved.items()} == EXPECTED_LAYOUT
    assert saved["middle"][0].item() == 1.5 and saved["block"][0, 0].item() == -2.0


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_of_views_into_one_storage(tmp_path, legacy):
    saved = shared_storage_tensors()
    path = tmp_path / "views.pth"
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)
    assert_same_views(load_untrusted(path), saved)  # the restricted reader itself
    state = read_checkpoint(path)
    assert list(state) == list(saved) and all(torch.equal(state[n], saved[n]) for n in saved)


class SharedViews(nn.Module):
    """Parameters and buffers that are views into one storage (a flat-parameter module)."""

    def __init__(self):
        super().__init__()
        views = shared_storage_tensors()
        self.head = nn.Parameter(views["head"])
        self.middle = nn.Parameter(views["middle"])
        self.block = nn.Parameter(views["block"])
        self.register_buffer("column", views["column"])
        self.register_buffer("transposed", views["transposed"])
        self.register_buffer("stepped", views["stepped"])
        self.register_buffer("int_block", views["int_block"])
        self.register_buffer("int_row", views["int_row"])


def save_under_reference_name(module, path, legacy):
    """Pickle ``module`` whole, its class named as if it lived in the reference's modeling package."""
    fake = types.ModuleType("modeling.layer.shared_views")
    renamed = type("SharedViews", (type(module),), {"__module__": fake.__name__, "__qualname__": "SharedViews"})
    fake.SharedViews = renamed
    sys.modules[fake.__name__] = fake
    try:
        module.__class__ = renamed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy saving cannot find source code of the class
            torch.save(module, path, _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules[fake.__name__]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_whole_module_with_views_into_one_storage(tmp_path, legacy):
    module = SharedViews()
    saved = module.state_dict()
    assert saved["middle"].storage_offset() == 17  # nn.Parameter keeps the view
    path = tmp_path / "shared_module.pth"
    save_under_reference_name(module, path, legacy)
    record = load_untrusted(path)
    assert isinstance(record, ModuleRecord) and record.pickled_name == "modeling.layer.shared_views.SharedViews"
    assert "modeling.layer.shared_views" not in sys.modules  # the class was never imported
    state = read_checkpoint(path)  # torch's weights_only loading refuses it; the fallback reads it
    assert list(state) == list(saved)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
        assert (state[name].storage_offset(), state[name].stride()) == EXPECTED_LAYOUT[name], name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_agw_module_with_flattened_parameters_gives_identical_features(tmp_path, legacy):
    """Every parameter a view at its own offset into one flat vector, pickled whole like AGW."""
    model, images = tiny_reference_model()
    expected_state, expected = model.state_dict(), features(model, images)
    offsets = []

    def flatten_parameters(copied):
        parameters = list(copied.parameters())
        flat = torch.cat([p.detach().flatten() for p in parameters])
        for parameter in parameters:
            offsets.append(sum(p.numel() for p in parameters[:len(offsets)]))
            parameter.data = flat[offsets[-1]:offsets[-1] + parameter.numel()].view_as(parameter)
        assert len({p.untyped_storage().data_ptr() for p in parameters}) == 1

    path = save_reference_whole_module(model, tmp_path / "flat.pth", legacy, prepare=flatten_parameters)
    assert len(offsets) == 23 and offsets[1] == 64  # conv1 (4x16x1x1) first, then bn1 at offset 64
    state = read_checkpoint(path)
    assert list(state) == list(expected_state)
    assert all(torch.equal(state[k], expected_state[k]) for k in expected_state)
    copy_model = _zeroed_tiny_model()
    load_reid_weights(copy_model, state)
    assert torch.equal(features(copy_model, images), expected)


class _OldStorage:
    """A storage of a torch <= 0.3 legacy file: the root storage, or a view (key, offset, size) of it."""

    def __init__(self, root_numel, view=None):
        self.root_numel, self.view = root_numel, view


class _OldTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return torch._utils._rebuild_tensor, self.args


class _OldPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _OldStorage):
            return ("storage", torch.FloatStorage, "root", "cpu", obj.root_numel, obj.view)
        return None


def write_torch03_file(path, obj, root):
    """The legacy stream as torch <= 0.3 wrote it, storage views included."""
    with open(path, "wb") as handle:
        system = dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
        for header in (0x1950A86A20F9469CFC6C, 1001, system):
            pickle.dump(header, handle, protocol=2)
        _OldPickler(handle, protocol=2).dump(obj)
        pickle.dump(["root"], handle, protocol=2)
        handle.write(struct.pack("<q", root.numel()))
        handle.write(root.numpy().tobytes())


def test_legacy_storage_views_offset_from_the_view_start(tmp_path):
    """A tensor's offset counts from the start of its storage view, not of the root storage."""
    root = torch.arange(20, dtype=torch.float32) * 2 + 1  # element i is 2 i + 1
    view = _OldStorage(20, ("view-1", 4, 12))  # root elements 4..15
    whole = _OldStorage(20)
    path = tmp_path / "torch03.pth"
    write_torch03_file(path, OrderedDict(
        block=_OldTensor(view, 2, (2, 3), (3, 1)),  # view elements 2..7 = root 6..11
        stepped=_OldTensor(view, 0, (4,), (3,)),  # root 4, 7, 10, 13
        root_stepped=_OldTensor(whole, 1, (3,), (5,)),  # root 1, 6, 11
    ), root)
    loaded = load_untrusted(path)
    assert torch.equal(loaded["block"], torch.tensor([[13.0, 15.0, 17.0], [19.0, 21.0, 23.0]]))
    assert torch.equal(loaded["stepped"], torch.tensor([9.0, 15.0, 21.0, 27.0]))
    assert torch.equal(loaded["root_stepped"], torch.tensor([3.0, 13.0, 23.0]))
    reference = torch.load(path, map_location="cpu", weights_only=False)  # trusted file: torch agrees
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)

    write_torch03_file(path, {"past_view": _OldTensor(view, 10, (3,), (1,))}, root)
    with pytest.raises(CheckpointError, match=r"reaches element 12 of a storage of 12 elements"):
        load_untrusted(path)
    write_torch03_file(path, {"bad_view": _OldTensor(_OldStorage(20, ("v", 15, 10)), 0, (2,), (1,))}, root)
    with pytest.raises(CheckpointError, match=r"storage view \[15, 25\) outside its storage of 20"):
        load_untrusted(path)
