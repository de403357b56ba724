"""MODEL.FORMAT agw_vi: the reference's checkpoint files, the safe reader's numpy allowance, the test transform."""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, model_cfg
from PIL import Image
from torchvision import transforms as T

from data.transforms import build_vi_eval_transform
from modeling import build_authorization_model
from modeling.agw_vi import EmbedNet, VisibleInfraredAuthorization
from modeling.authorization import detect_format
from modeling.checkpoint import read_checkpoint
from modeling.formats import MODEL_FORMATS
from modeling.safe_unpickle import RestrictedUnpickler, load_untrusted
from utils.errors import CheckpointError

FMT = MODEL_FORMATS.get("agw_vi")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet18_nl embed_net of 206 classes with moved BN statistics, saved as the reference's train.py does."""
    torch.manual_seed(3)
    net = EmbedNet(206, "resnet18_nl")
    with torch.no_grad():
        net.bottleneck.running_mean.uniform_(-0.5, 0.5)
        net.NL_3[0].W[1].weight.fill_(0.3)
    net.eval()
    folder = tmp_path_factory.mktemp("agw_vi")
    path = os.path.join(folder, "regdb_agw_p4_n8_lr_0.1_seed_0_trial_1_best.t")
    torch.save({"net": net.state_dict(), "cmc": np.linspace(0.5, 1.0, 20).astype(np.float32),
                "mAP": np.float64(0.61), "mINP": np.float64(0.42), "epoch": 3}, path)
    return net, path


def rewrite_pickle(path, target, edit):
    """Copy a torch zip file with its data.pkl passed through ``edit`` (bytes -> bytes)."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as copy:
        for name in source.namelist():
            data = source.read(name)
            copy.writestr(name, edit(data) if name.endswith("/data.pkl") else data)
    return target


def test_reference_file_needs_the_safe_reader(trained):
    net, path = trained
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    content = load_untrusted(path)
    assert content["epoch"] == 3
    assert content["cmc"].dtype == np.float32
    assert np.array_equal(content["cmc"], np.linspace(0.5, 1.0, 20).astype(np.float32))
    assert type(content["mINP"]) is np.float64 and content["mINP"] == 0.42 and content["mAP"] == 0.61
    assert set(content["net"]) == set(net.state_dict())


def test_numpy1_module_names(trained, tmp_path):
    _, path = trained
    old = rewrite_pickle(path, tmp_path / "numpy1.t",
                         lambda data: data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    with zipfile.ZipFile(old) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert b"numpy.core.multiarray\n_reconstruct" in pickled and b"numpy._core" not in pickled
    content = load_untrusted(old)
    assert content["cmc"][0] == np.float32(0.5) and content["mINP"] == 0.42
    assert torch.equal(read_checkpoint(old)["bottleneck.running_mean"], trained[0].bottleneck.running_mean)


@pytest.mark.parametrize("replacement", [b"numpy._core.numeric\n_frombuffer\n", b"numpy\nload\n",
                                         b"numpy.lib.npyio\nload\n"])
def test_other_numpy_globals_are_refused(trained, tmp_path, replacement):
    _, path = trained
    evil = rewrite_pickle(path, tmp_path / "evil.t",
                          lambda data: data.replace(b"numpy._core.multiarray\nscalar\n", replacement))
    name = replacement.decode().strip().replace("\n", ".")
    with pytest.raises(CheckpointError, match=f"refused to load: the pickle asks for the global '{name}'"):
        read_checkpoint(evil)


def test_object_arrays_are_refused():
    data = pickle.dumps({"x": np.array([1, "a"], dtype=object)}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="numpy dtype 'O8' is not a plain numeric type"):
        RestrictedUnpickler(io.BytesIO(data)).load()
    data = pickle.dumps({"x": np.arange(3, dtype=np.int64), "y": np.complex64(1j)}, protocol=2)
    loaded = RestrictedUnpickler(io.BytesIO(data)).load()
    assert loaded["x"].tolist() == [0, 1, 2] and loaded["y"] == np.complex64(1j)


def test_auto_detects_and_loads(trained, tmp_path):
    net, path = trained
    cfg = model_cfg(NAME="resnet18_nl", FORMAT="auto")
    assert detect_format(read_checkpoint(path), path) == "agw_vi"
    assert FMT.detect({"net": net.state_dict()})
    model = build_authorization_model(cfg, path, "cpu")
    assert isinstance(model, VisibleInfraredAuthorization) and model.modality == "visible"
    assert model.feature == "bn" and model.feature_dim == 512 and not model.training
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.for_modality("infrared")(x), net.features(x, x, 2)[1])
        torch.testing.assert_close(model(x), net.features(x, x, 1)[1])
    # plain state dict with DataParallel's prefix, classifier of another size: both fine.
    plain = {f"module.{k}": v for k, v in net.state_dict().items() if k != "classifier.weight"}
    plain["module.classifier.weight"] = torch.zeros(395, 512)
    torch.save(plain, tmp_path / "plain.pth")
    cfg = model_cfg(NAME="resnet18_nl", FORMAT="agw_vi", VI_FEATURE="pool")
    model = build_authorization_model(cfg, str(tmp_path / "plain.pth"), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.features(x, x, 1)[0])
    assert model.net.classifier is None


def test_wrong_architecture_and_other_formats(trained, tmp_path):
    _, path = trained
    message = r"do not fit agw_vi architecture resnet50_nl .*fit MODEL.NAME resnet18_nl"
    with pytest.raises(CheckpointError, match=message):
        build_authorization_model(model_cfg(NAME="resnet50_nl", FORMAT="agw_vi"), path, "cpu")
    assert not FMT.detect({"base.conv1.weight": torch.zeros(1), "bottleneck.weight": torch.zeros(1)})
    assert not FMT.detect({"visible_module.visible.conv1.weight": torch.zeros(1)})


def test_reference_test_transform():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 40), dtype=np.uint8), mode="L")
    tensor = build_vi_eval_transform()(image)
    assert tensor.shape == (3, 288, 144)
    resized = np.array(image.convert("RGB").resize((144, 288), Image.LANCZOS))
    reference = T.Compose([T.ToPILImage(), T.Resize((288, 144)), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(tensor, reference(resized))
    assert build_vi_eval_transform((32, 16))(image).shape == (3, 32, 16)


def test_pieces_fit_together(tmp_path):
    """Synthetic SYSU-MM01 -> each test image through the stem of its modality -> per-trial scores."""
    from data import build_dataset
    from data.synthetic_vi import make_sysu_mm01
    from evaluation.cross_modality import score_protocols

    make_sysu_mm01(tmp_path, num_ids=6, images_per_id_cam=1, height=32, width=16)
    dataset = build_dataset("sysu_mm01", tmp_path, trials=[0, 1])
    visible = FMT.build(model_cfg(NAME="resnet18_nl"))
    models = {"visible": visible, "infrared": visible.for_modality("infrared")}
    transform = build_vi_eval_transform((32, 16))
    with torch.no_grad():
        features = {r.path: models[r.modality](transform(Image.open(r.path))[None])[0].numpy()
                    for r in dataset.test_images()}
    result = score_protocols(dataset, features)
    assert list(result) == ["all_search", "indoor_search"]
    for scores in result.values():
        assert [entry["trial"] for entry in scores["trials"]] == [0, 1]
        assert scores["mean"]["short_list"] and 0.0 <= scores["mean"]["mAP"] <= 1.0
        assert scores["mean"]["rank20"] == 1.0  # a short list: every valid query matches by its end
