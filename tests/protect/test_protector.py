"""The Python API for services (engine/protect/protector.py): README example, same path as the command, errors."""

import os
import re

import numpy as np
import pytest
import torch
from helpers import REPO, protect_argv
from PIL import Image

import protect_image
from configs import get_default_config, load_config
from data import img_npy
from data.synthetic import make_market1501
from engine.protect.protector import Protector
from modeling import build_authorization_model
from modeling.build import build_model
from utils.errors import ConfigError

README = os.path.join(REPO, "README.md")
SIZE = (32, 16)


def readme_example():
    """The first ```python block after the README's 'Python API for services' heading."""
    with open(README) as handle:
        text = handle.read()
    section = text.split("## Python API for services", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def tiny_model():
    cfg = load_config("", ["INPUT.IMG_SIZE", f"[{SIZE[0]}, {SIZE[1]}]"])
    return build_authorization_model(cfg, "", "cpu"), cfg


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The files the example names are made here; the example itself is executed unchanged."""
    code = readme_example()
    monkeypatch.chdir(tmp_path)
    cfg = get_default_config()
    cfg.MODEL.NAME = "mobilenet_v2"
    torch.save(build_model(cfg).state_dict(), "my_reid_model.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 40, 3), dtype=np.uint8)).save("person.jpg")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    saved = Image.open("person_protected.png")
    assert saved.size == (32, 64) and saved.mode == "RGB"
    result = namespace["result"]
    assert namespace["features"].shape == (1, 1280)
    assert torch.equal(result.pixels[0], torch.from_numpy(np.array(saved)).permute(2, 0, 1))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=5)
    output = tmp_path_factory.mktemp("run") / "protect"
    argv = protect_argv(root, output, "--save_image_npy", "--train_order", "every_image", batch_size=4, max_iter=3,
                        image_size=SIZE)
    assert protect_image.main(argv) == 0
    return output


def test_the_command_and_the_api_give_the_same_protected_images(run_folder):
    """Train, then test batches, in the run's order: the API continues the stream as the run does."""
    model, cfg = tiny_model()
    protector = Protector(model, cfg, overrides={"PIXELFADE.MAX_ITER": 3, "PIXELFADE.BATCH_SIZE": 4})
    npy = str(run_folder / "img_npy")
    for split, batches in (("train", 2), ("test", 3)):
        for batch_index in range(batches):
            clean, theirs, _, _ = img_npy.read_batch(npy, split, batch_index)
            ours = protector.protect(torch.from_numpy(clean))
            assert torch.equal(ours.protected, torch.from_numpy(theirs)), f"{split} batch {batch_index}"


def test_same_seed_same_images_and_per_image_mode_ignores_the_batch():
    model, cfg = tiny_model()
    images = torch.randn(5, 3, *SIZE)
    settings = {"PIXELFADE.MAX_ITER": 2, "PIXELFADE.BATCH_SIZE": 4, "PIXELFADE.SEED": 7}
    first = Protector(model, cfg, overrides=settings).protect(images)
    again = Protector(model, cfg, overrides=settings).protect(images)
    assert torch.equal(first.protected, again.protected)
    other_seed = Protector(model, cfg, overrides={**settings, "PIXELFADE.SEED": 8}).protect(images)
    assert not torch.equal(first.protected, other_seed.protected)
    per_image = {**settings, "PIXELFADE.MODE": "per_image"}
    whole = Protector(model, cfg, overrides=per_image).protect(images, indices=[10, 11, 12, 13, 14])
    last = Protector(model, cfg, overrides=per_image).protect(images[4:5], indices=[14])
    assert torch.equal(whole.protected[4], last.protected[0])  # alone in its batch both times
    third = Protector(model, cfg, overrides=per_image).protect(images[3:4], indices=[13])
    assert torch.allclose(whole.protected[3], third.protected[0], atol=1e-4)  # batch-size rounding only
    moved = Protector(model, cfg, overrides=per_image).protect(images[3:4], indices=[12])
    assert (whole.protected[3] - moved.protected[0]).abs().max() > 0.1


def test_outputs_describe_each_image():
    model, cfg = tiny_model()
    protector = Protector(model, cfg, overrides={"PIXELFADE.MAX_ITER": 4, "PIXELFADE.BATCH_SIZE": 2})
    images = [Image.new("RGB", (20, 40), (30 * i, 40, 90)) for i in range(3)]
    result = protector.protect(images)
    assert result.protected.shape == (3, 3, *SIZE) and result.pixels.dtype == torch.uint8
    with torch.no_grad():
        expected = model(result.protected)
    assert torch.allclose(result.protected_features, expected, atol=1e-5)
    mse = ((result.protected_features - result.original_features) ** 2).mean(dim=1)
    assert torch.allclose(result.stats["feature_mse"], mse)
    assert set(result.stats) == {"feature_mse", "cosine", "noise_share", "closer_to_noise", "constraint_held"}
    held = result.stats["constraint_held"] * 4
    assert torch.equal(held, held.round())
    loose = {"PIXELFADE.MAX_ITER": 8, "PIXELFADE.TAIL_ITERS": 2, "PIXELFADE.EPSILON": 1e6}
    held = Protector(model, cfg, overrides=loose).protect(images).stats["constraint_held"]
    assert held.tolist() == [0.75] * 3  # every step but the 2 tail steps
    assert [image.size for image in result.images()] == [(16, 32)] * 3
    assert protector.next_index == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"PIXELFADE.MAX_ITER": 0}, "PIXELFADE.MAX_ITER"),
        ({"PIXELFADE.METHOD": "pixelate"}, "PIXELFADE.METHOD"),
        ({"PIXELFADE.NO_SUCH_KEY": 1}, "unknown config key 'NO_SUCH_KEY'"),
    ],
)
def test_bad_settings_raise_the_commands_one_line_error(overrides, message):
    model, cfg = tiny_model()
    with pytest.raises(ConfigError) as caught:
        Protector(model, cfg, overrides=overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_inputs_are_named():
    model, cfg = tiny_model()
    protector = Protector(model, cfg, overrides={"PIXELFADE.MAX_ITER": 1})
    with pytest.raises(ConfigError, match=r"\(N, 3, 32, 16\) normalised images \(INPUT.IMG_SIZE\), got \(2, 3, 8, 8\)"):
        protector.protect(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="non-empty list of PIL images"):
        protector.protect([])
    with pytest.raises(ConfigError, match="2 images need 2 indices"):
        protector.protect(torch.zeros(2, 3, *SIZE), indices=[1])
    with pytest.raises(ConfigError, match="must be a torch.nn.Module"):
        Protector("model.pth")
