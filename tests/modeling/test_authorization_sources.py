"""Any Re-ID model as the authorization model: TorchScript, a factory, the input contract, the
relative EPSILON, extra scoring models and the feature-scale command."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, protect_argv
from model_factories import NormalizingReID, TinyReID

import protect_image
from configs import load_config
from data.datasets.image_folder import scan_folder
from data.loaders import read_image
from data.synthetic import make_market1501
from data.transforms import build_eval_transform
from engine.methods.pixelfade import PixelFadeParams, constraint_bound, protect_batch
from modeling import build_authorization_model
from modeling.authorization import is_torchscript_archive
from utils.errors import CheckpointError, ConfigError

TINY = ["INPUT.IMG_SIZE", "[32, 16]", "DATALOADER.NUM_WORKERS", "0", "PIXELFADE.NUM_GRIDS", "0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=2)
    return os.path.join(str(root), "market1501", "query")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyReID()), str(path))
    return str(path)


def protect_folder(folder, output, *extra):
    argv = [
        "--image_folder",
        folder,
        "--output",
        str(output),
        "--batch_size",
        "2",
        "--max_iter",
        "3",
        "--device",
        "cpu",
        "--no_progress",
        *extra,
        *TINY,
    ]
    return protect_image.main(argv)


def own_features(model, folder, pixels=False):
    """What the model's own code computes on the project's eval transform of each image."""
    cfg = load_config("", TINY)
    transform = build_eval_transform(cfg)
    paths, _ = scan_folder(folder)
    batch = torch.stack([transform(read_image(path)) for path in paths])
    if pixels:
        mean = torch.tensor(cfg.INPUT.PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(cfg.INPUT.PIXEL_STD).view(1, 3, 1, 1)
        batch = (batch * std + mean) * 255
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize("fmt", ["torchscript", "auto"])
def test_a_torchscript_archive_protects_and_its_original_features_are_its_own(folder, scripted, tmp_path, fmt):
    output = tmp_path / "out"
    assert protect_folder(folder, output, "--reid_ckpt_path", scripted, "MODEL.FORMAT", fmt) == 0
    features = torch.load(output / "features" / "features.pt", weights_only=True)
    expected = own_features(TinyReID(), folder)
    assert (features["original"] - expected).abs().max() < 1e-5
    assert features["protected"].shape == expected.shape == (4, 16)
    report = json.loads((output / "results.json").read_text())
    # PixelFade lowered the feature error against what pure noise gives.
    noise = torch.randn(4, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        noise_error = float(((TinyReID()(noise) - expected) ** 2).mean())
    assert report["protection"]["gallery"]["feature_mse"] < noise_error
    if fmt == "auto":
        assert "MODEL.FORMAT auto -> torchscript" in (output / "log.txt").read_text()
        assert is_torchscript_archive(scripted) and not is_torchscript_archive(str(output / "features" / "features.pt"))


def test_a_model_that_normalizes_itself_gets_pixels(folder, tmp_path):
    path = tmp_path / "pixels.pt"
    torch.jit.save(torch.jit.script(NormalizingReID()), str(path))
    output = tmp_path / "out"
    assert (
        protect_folder(
            folder, output, "--reid_ckpt_path", str(path), "INPUT.MODEL_INPUT", "pixels", "INPUT.PIXEL_RANGE", "255.0"
        )
        == 0
    )
    features = torch.load(output / "features" / "features.pt", weights_only=True)
    assert (features["original"] - own_features(NormalizingReID(), folder, pixels=True)).abs().max() < 1e-4


def test_a_python_factory_builds_the_model_and_loads_its_weights(folder, tmp_path):
    weights = tmp_path / "w.pth"
    source = TinyReID()
    with torch.no_grad():
        source.fc.weight.mul_(2.0)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, weights)
    output = tmp_path / "out"
    assert (
        protect_folder(
            folder,
            output,
            "--reid_ckpt_path",
            str(weights),
            "MODEL.FORMAT",
            "module",
            "MODEL.FACTORY",
            "model_factories:tiny_reid",
        )
        == 0
    )
    features = torch.load(output / "features" / "features.pt", weights_only=True)
    assert (features["original"] - own_features(source, folder)).abs().max() < 1e-5


def test_bad_model_sources_are_one_line_errors(folder, scripted, tmp_path, capsys):
    cases = [
        (
            ["--reid_ckpt_path", scripted, "MODEL.FORMAT", "module", "MODEL.FACTORY", "nowhere"],
            "MODEL.FACTORY must be 'package.module:function' with MODEL.FORMAT module, got 'nowhere'",
        ),
        (
            ["--random_init", "MODEL.FORMAT", "module", "MODEL.FACTORY", "model_factories:missing"],
            "MODEL.FACTORY: model_factories has no function missing",
        ),
        (["--random_init", "MODEL.FORMAT", "caffe"], "MODEL.FORMAT must be one of auto, agw"),
        (["--random_init", "TEST.EVAL_MODELS", "['agw:resnet50']"], "TEST.EVAL_MODELS entry 'agw:resnet50' must be"),
    ]
    for extra, message in cases:
        assert protect_folder(folder, tmp_path / "x", *extra) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protect_image.py: error")]
        assert len(lines) == 1 and message in lines[0], lines
    assert not os.path.exists(tmp_path / "x")


def test_a_state_dict_of_unknown_keys_is_refused_by_auto(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="MODEL.FORMAT auto cannot tell the format from its keys"):
        build_authorization_model(load_config("", TINY), str(path), "cpu")
    with pytest.raises(ConfigError, match="MODEL.FORMAT torchscript needs the archive"):
        build_authorization_model(load_config("", TINY + ["MODEL.FORMAT", "torchscript"]), "", "cpu")


def test_relative_epsilon_is_the_absolute_bound_times_the_feature_scale():
    target = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    relative = PixelFadeParams(epsilon=0.1, epsilon_mode="relative")
    assert constraint_bound(target, PixelFadeParams(epsilon=0.1), per_sample=False) == 0.1
    assert torch.allclose(constraint_bound(target, relative, per_sample=False), torch.tensor(0.1 * 14 / 4))
    assert torch.allclose(constraint_bound(target, relative, per_sample=True), torch.tensor([0.1 * 5.0, 0.1 * 2.0]))
    with pytest.raises(ConfigError, match="PIXELFADE.EPSILON_MODE"):
        PixelFadeParams(epsilon_mode="percent")


def test_relative_epsilon_does_not_depend_on_the_feature_scale():
    """Scaling a model's features by 10 scales its loss by 100: relative mode takes the same steps."""
    data = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(4))
    masks = torch.zeros(5, data.numel(), dtype=torch.bool)
    masks[torch.arange(data.numel()) % 5, torch.arange(data.numel())] = True
    small = TinyReID()
    large = TinyReID()
    with torch.no_grad():
        large.fc.weight.mul_(10.0)
        large.fc.bias.mul_(10.0)
    held = {}
    for mode, epsilon in (("relative", 0.02), ("absolute", 0.02)):
        params = PixelFadeParams(max_iter=12, epsilon=epsilon, epsilon_mode=mode)
        held[mode] = [
            int(protect_batch(m, data, masks, noise, params).steps_constraint_held[0]) for m in (small, large)
        ]
    assert held["relative"][0] == held["relative"][1] and 0 < held["relative"][0] < 7
    assert held["absolute"][0] != held["absolute"][1]


def test_extra_models_score_the_same_test_split(tmp_path, scripted):
    root = tmp_path / "data"
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)
    output = tmp_path / "out"
    argv = protect_argv(root, output, "TEST.EVAL_MODELS", f"['torchscript::{scripted}']")
    assert protect_image.main(argv) == 0
    report = json.loads((output / "results.json").read_text())
    table = report["eval_models"]["torchscript:tiny.pt"]
    assert list(table) == ["encry2encry", "clean2clean", "encry2clean", "clean2encry"]
    assert table["clean2clean"] != report["reid"]["clean2clean"]
    assert "Re-ID scored by the extra model torchscript:tiny.pt" in (output / "results.md").read_text()


def test_the_feature_scale_command_reports_the_equivalent_bounds(folder, scripted):
    done = subprocess.run(
        [
            sys.executable,
            "tools/feature_scale.py",
            "--reid_ckpt_path",
            scripted,
            "--image_folder",
            folder,
            "--num_images",
            "3",
            "--max_iter",
            "4",
            "--epsilon",
            "0.02",
            "--json",
            *TINY,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    report = json.loads(done.stdout)
    expected = own_features(TinyReID(), folder)[:3]
    scale = float(expected.pow(2).mean())
    assert report["feature_dim"] == 16 and report["images"] == 3
    assert report["feature_mean_square"] == pytest.approx(scale, rel=1e-4)
    assert report["relative_epsilon_equal_to_absolute"] == pytest.approx(0.02 / scale, rel=1e-4)
    assert 0.0 <= report["share_of_steps_constraint_held"] <= 1.0


@pytest.mark.parametrize(
    "fmt, name, save",
    [
        (
            "fastreid",
            "resnet50_nl",
            lambda state: {
                "model": {f"backbone.{k[9:]}" if k.startswith("backbone.") else k: v for k, v in state.items()}
            },
        ),
        ("torchreid", "osnet_x0_25", lambda state: state),
    ],
)
def test_other_ecosystems_files_protect_through_the_cli_with_their_own_features(folder, tmp_path, fmt, name, save):
    """The file is written the way its ecosystem writes it; features.pt's originals are the source model's."""
    from modeling.formats import MODEL_FORMATS

    cfg = load_config("", TINY + ["MODEL.FORMAT", fmt, "MODEL.NAME", name, "MODEL.INIT_SEED", "3"])
    torch.manual_seed(3)
    source = MODEL_FORMATS.get(fmt).build(cfg).eval()
    state = dict(source.state_dict())
    state["classifier.weight" if fmt == "torchreid" else "heads.weight"] = torch.randn(751, source.feature_dim)
    if fmt == "torchreid":
        state["classifier.bias"] = torch.zeros(751)
    path = tmp_path / f"{fmt}.pth"
    torch.save(save(state), path)
    output = tmp_path / "out"
    assert protect_folder(folder, output, "--reid_ckpt_path", str(path), "MODEL.NAME", name) == 0
    assert f"MODEL.FORMAT auto -> {fmt}" in (output / "log.txt").read_text()
    features = torch.load(output / "features" / "features.pt", weights_only=True)
    assert (features["original"] - own_features(source, folder)).abs().max() < 1e-5


class Recorder(torch.nn.Module):
    """Keeps the batch it was given; its feature is the batch's first values."""

    def forward(self, images):
        self.seen = images
        return images.flatten(1)[:, :4]


def test_an_image_evaluator_on_clip_input_sees_its_own_statistics_and_size():
    from data.transforms import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, normalize
    from modeling.authorization import OwnInputContract

    pixels = torch.rand(2, 3, 384, 128, generator=torch.Generator().manual_seed(0))
    recorder = Recorder()
    OwnInputContract(recorder, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD,
                     (256, 128))(normalize(pixels, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD))
    expected = torch.nn.functional.interpolate(normalize(pixels, IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD),
                                               size=(256, 128), mode="bilinear", align_corners=False)
    assert recorder.seen.shape == (2, 3, 256, 128)
    assert torch.allclose(recorder.seen, expected, atol=1e-5)


@pytest.mark.parametrize("clip_input", [True, False])
def test_eval_models_are_adapted_only_on_a_clip_input_run(scripted, clip_input):
    from modeling.authorization import OwnInputContract, build_eval_models

    opts = ["TEST.EVAL_MODELS", f"['torchscript::{scripted}']"]
    if clip_input:
        opts += ["INPUT.PIXEL_MEAN", "[0.48145466, 0.4578275, 0.40821073]",
                 "INPUT.PIXEL_STD", "[0.26862954, 0.26130258, 0.27577711]", "INPUT.IMG_SIZE", "[384, 128]"]
    (model,) = build_eval_models(load_config("", opts), "cpu").values()
    assert isinstance(model, OwnInputContract) == clip_input
    if clip_input:
        assert model.own_size == (256, 128) and model.own_mean == (0.485, 0.456, 0.406) and not model.training
