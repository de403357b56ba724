"""Cross-modality AGW training: the sampler, the recipe's pieces, a tiny run, resuming, the command's bad input."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from helpers import model_cfg
from PIL import Image

from configs import config_with_flags
from data import build_dataset
from data.cross_modality_sampler import CrossModalityBatchSampler
from data.synthetic_vi import make_sysu_mm01
from engine.train import cross_modality as vt
from evaluation.cross_modality import score_protocols
from modeling import build_authorization_model
from modeling.agw_vi import EmbedNet
from tools.train_cross_modality import main
from utils.errors import CheckpointError

FLAGS = ["--device", "cpu", "--num_workers", "0", "--no_progress"]
OPTS = ["MODEL.NAME", "resnet18_nl", "VI_TRAIN.IMG_SIZE", "[32, 16]", "VI_TRAIN.IDS_PER_BATCH", "4",
        "VI_TRAIN.NUM_POS", "2", "VI_TRAIN.EVAL_PERIOD", "1"]


# ------------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------------
VISIBLE_PIDS = [0, 0, 1, 1, 1, 2, 3, 3, 4, 4]
THERMAL_PIDS = [0, 1, 1, 2, 2, 2, 3, 4, 4, 4, 4]


def test_sampler_batches_are_p_identities_by_k_per_modality():
    sampler = CrossModalityBatchSampler(VISIBLE_PIDS, THERMAL_PIDS, ids_per_batch=3, num_pos=4, seed=5)
    batches = sampler.batches()
    assert len(sampler) == len(batches) == 11 // 12 + 1 == 1  # the reference's int(N / (P * K)) + 1
    sampler = CrossModalityBatchSampler(VISIBLE_PIDS, THERMAL_PIDS, ids_per_batch=2, num_pos=2, seed=5)
    batches = sampler.batches()
    assert len(batches) == 11 // 4 + 1 == 3
    for batch in batches:
        assert len(batch) == 4
        visible = [VISIBLE_PIDS[v] for v, _ in batch]
        thermal = [THERMAL_PIDS[t] for _, t in batch]
        assert visible == thermal  # both halves aligned by identity
        assert visible[0] == visible[1] and visible[2] == visible[3] and visible[0] != visible[2]
    # identity 0 has one thermal image: drawn with replacement, it fills all K places.
    sampler = CrossModalityBatchSampler([0, 0, 1], [0, 1, 1], ids_per_batch=2, num_pos=3)
    batch = sampler.batches()[0]
    assert sorted(t for v, t in batch if VISIBLE_PIDS[v] == 0) == [0, 0, 0]


def test_sampler_is_seeded_by_epoch_only():
    sampler = CrossModalityBatchSampler(VISIBLE_PIDS, THERMAL_PIDS, ids_per_batch=2, num_pos=2, seed=1)
    sampler.set_epoch(3)
    torch.manual_seed(0)
    first = sampler.batches()
    torch.manual_seed(99)
    assert sampler.batches() == first == list(sampler)
    sampler.set_epoch(4)
    assert sampler.batches() != first
    drawn = {THERMAL_PIDS[t] for epoch in range(20) for batch in _epoch(sampler, epoch) for _, t in batch}
    assert drawn == {0, 1, 2, 3, 4}


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return sampler.batches()


def test_sampler_rejects_unusable_labels():
    with pytest.raises(ValueError, match="identity 2 has images in one modality only"):
        CrossModalityBatchSampler([0, 1, 2], [0, 1], ids_per_batch=2, num_pos=1)
    with pytest.raises(ValueError, match="2 identities, fewer than the 3 of one batch"):
        CrossModalityBatchSampler([0, 1], [0, 1], ids_per_batch=3, num_pos=1)


# ------------------------------------------------------------------------------------------------
# The recipe's pieces
# ------------------------------------------------------------------------------------------------
def reference_lr(epoch, lr=0.1):
    """train.py's adjust_learning_rate, written out."""
    if epoch < 10:
        return lr * (epoch + 1) / 10
    if epoch < 20:
        return lr
    if epoch < 50:
        return lr * 0.1
    return lr * 0.01


def test_schedule_and_param_groups_are_the_reference_ones():
    cfg = model_cfg()
    assert [vt.lr_at_epoch(cfg, e) for e in range(81)] == pytest.approx([reference_lr(e) for e in range(81)])
    net = EmbedNet(5, "resnet18_nl")
    optimizer = vt.build_optimizer(net, 0.1)
    vt.set_learning_rate(optimizer, 0.02)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.002, 0.02, 0.02])
    assert all(g["momentum"] == 0.9 and g["nesterov"] and g["weight_decay"] == 5e-4 for g in optimizer.param_groups)
    base = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(net.visible_module.visible.conv1.weight) in base and id(net.NL_2[0].W[0].weight) in base
    assert {id(p) for p in optimizer.param_groups[2]["params"]} == {id(net.classifier.weight)}
    assert id(net.bottleneck.weight) not in base and id(net.bottleneck.bias) not in base


def test_train_transform_and_file_names(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 20, 3), dtype=np.uint8))
    transform = vt.build_vi_train_transform((32, 16), 10)
    torch.manual_seed(1)
    first = transform(image)
    torch.manual_seed(1)
    assert first.shape == (3, 32, 16) and torch.equal(transform(image), first)
    cfg = model_cfg()
    cfg.DATASETS.NAMES = "regdb"

    class Trials:
        trials = (3,)

    assert vt.best_filename(cfg, Trials) == "regdb_agw_p4_n8_lr_0.1_seed_0_trial_3_best.t"
    cfg.DATASETS.NAMES = "sysu_mm01"
    assert vt.best_filename(cfg, Trials) == "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"


def test_imagenet_weights_go_into_all_three_resnets(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    net = EmbedNet(3, "resnet18_nl")
    vt.load_imagenet_resnets(net, str(path))
    for copy in (net.visible_module.visible, net.thermal_module.thermal, net.base_resnet.base):
        assert torch.equal(copy.conv1.weight, resnet.conv1.weight)
        assert torch.equal(copy.layer3[1].bn2.running_var, resnet.layer3[1].bn2.running_var)
    state = resnet.state_dict()
    del state["layer2.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not a torchvision ImageNet ResNet of MODEL.NAME resnet18_nl"):
        vt.load_imagenet_resnets(net, str(path))


# ------------------------------------------------------------------------------------------------
# A tiny run, its best file, resuming
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vi_data")
    make_sysu_mm01(root, num_ids=12, images_per_id_cam=1, height=32, width=16)
    return root


def train(root, output, flags=(), opts=()):
    """The command on the tiny synthetic set; flags before the trailing KEY VALUE pairs."""
    return main(["--dataset", "sysu_mm01", "--root", str(root), "--output", str(output), *FLAGS, *flags, *OPTS, *opts])


def train_with_hook(root, output, on_trainer):
    flags = {"DATASETS.NAMES": "sysu_mm01", "DATASETS.ROOT_DIR": str(root), "OUTPUT_DIR": str(output),
             "VI_TRAIN.MAX_EPOCHS": 2, "MODEL.DEVICE": "cpu", "DATALOADER.NUM_WORKERS": 0}
    cfg = config_with_flags("", OPTS, flags, "train_vi")
    return vt.train_cross_modality(cfg, vt.TrainOptions(show_progress=False, on_trainer=on_trainer))


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("vi_run")
    assert train(data_root, output, ["--max_epochs", "2"]) == 0
    return output


BEST = "sysu_agw_p2_n4_lr_0.1_seed_0_best.t"  # p<K>_n<P>


def checkpoint_weights(output, epochs):
    saved = torch.load(output / f"training_checkpoint_{epochs}.pt", map_location="cpu", weights_only=True)
    return saved["model"]


def test_loss_falls_and_the_best_file_is_the_reference_one(finished_run, data_root):
    results = json.loads((finished_run / "results.json").read_text())
    losses = [e["loss"] for e in results["epochs"]]
    assert [e["epoch"] for e in results["epochs"]] == [0, 1] and losses[1] < losses[0]
    assert [e["batches"] for e in results["epochs"]] == [30 // 8 + 1] * 2  # 30 visible, 15 thermal images
    assert [e["epoch"] for e in results["evaluations"]] == [1]  # e > 0 and e % 1 == 0; the last
    assert results["best"] == {"epoch": 1, "rank1": results["evaluations"][0]["rank1"], "file": BEST}
    assert set(os.listdir(finished_run)) == {".lock", BEST, "config.yaml", "log.txt", "results.json",
                                             "training_checkpoint_2.pt"}
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(finished_run / BEST, weights_only=True)  # numpy values, as the reference's files
    from modeling.safe_unpickle import load_untrusted

    content = load_untrusted(str(finished_run / BEST))
    assert sorted(content) == ["cmc", "epoch", "mAP", "mINP", "net"] and content["epoch"] == 1
    assert content["cmc"].dtype == np.float32 and content["cmc"].shape == (20,)
    assert type(content["mAP"]) is np.float64 and type(content["mINP"]) is np.float64
    weights = checkpoint_weights(finished_run, 2)
    assert list(content["net"]) == list(weights) and all(torch.equal(content["net"][k], weights[k]) for k in weights)

    # protect_image.py's loader (MODEL.FORMAT auto) reads it; its features score as the file says.
    cfg = model_cfg(NAME="resnet18_nl", FORMAT="auto", VI_FEATURE="bn_l2")
    visible = build_authorization_model(cfg, str(finished_run / BEST), "cpu")
    trained = EmbedNet(8, "resnet18_nl")
    trained.load_state_dict(weights)
    trained.eval()
    dataset = build_dataset("sysu_mm01", data_root, trials=[0])
    models = {"visible": visible, "infrared": visible.for_modality("infrared")}
    transform = vt.build_vi_eval_transform((32, 16))
    features = {}
    with torch.no_grad():
        for record in dataset.test_images():
            image = transform(Image.open(record.path))[None]
            features[record.path] = models[record.modality](image)[0].numpy()
            modal = 1 if record.modality == "visible" else 2
            torch.testing.assert_close(models[record.modality](image), trained(image, image, modal)[1])
    scores = score_protocols(dataset, features)["all_search"]["mean"]
    assert scores["mAP"] == pytest.approx(content["mAP"]) and scores["rank1"] == pytest.approx(content["cmc"][0])
    assert scores["mINP"] == pytest.approx(content["mINP"])


class Killed(Exception):
    pass


def test_resume_after_epoch_one_gives_the_same_weights(finished_run, data_root, tmp_path):
    def kill_after_first_epoch(trainer):
        @trainer.on(vt.Events.EPOCH_COMPLETED)
        def _kill(engine):
            raise Killed

    with pytest.raises(Killed):
        train_with_hook(data_root, tmp_path, kill_after_first_epoch)
    assert (tmp_path / "training_checkpoint_1.pt").exists() and not (tmp_path / BEST).exists()
    assert train(data_root, tmp_path, ["--max_epochs", "2"]) == 0
    resumed, uninterrupted = checkpoint_weights(tmp_path, 2), checkpoint_weights(finished_run, 2)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    first = json.loads((finished_run / "results.json").read_text())
    second = json.loads((tmp_path / "results.json").read_text())
    assert [e["loss"] for e in second["epochs"]] == [e["loss"] for e in first["epochs"]]
    assert second["evaluations"] == first["evaluations"] and not (tmp_path / "training_checkpoint_1.pt").exists()


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, opts, message", [
    (["--dataset", "market1501"], [], "DATASETS.NAMES (--dataset) must be one of sysu_mm01, regdb, got 'market1501'"),
    ([], ["VI_TRAIN.NUM_POS", "0"], "VI_TRAIN.NUM_POS must be an integer >= 1, got 0"),
    ([], ["VI_TRAIN.STEPS", "[50, 20]"], "VI_TRAIN.STEPS must be increasing whole numbers of epochs, got [50, 20]"),
    ([], ["MODEL.NAME", "resnet50"], "MODEL.NAME must be one of resnet50_nl, resnet18_nl, got 'resnet50'"),
    (["--dataset", "regdb"], ["DATASETS.TRIALS", "[1, 2]"], "DATASETS.TRIALS must be one RegDB trial"),
    ([], ["VI_TRAIN.IDS_PER_BATCH", "9"], "8 train identities, fewer than the 9 of one batch (VI_TRAIN.IDS_PER_BATCH)"),
    ([], ["VI_TRAIN.EVAL_PROTOCOL", "visible_to_thermal"],
     "VI_TRAIN.EVAL_PROTOCOL must be one of , all_search, indoor_search, got 'visible_to_thermal'"),
])
def test_bad_input_is_one_line_and_exit_2(data_root, tmp_path, capsys, flags, opts, message):
    output = tmp_path / "out"
    assert train(data_root, output, flags, opts) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_cross_modality.py: error: ") and message in err and err.count("\n") == 1
    assert not output.exists()


def test_missing_data_unknown_flag_and_another_runs_folder(finished_run, data_root, tmp_path, capsys):
    assert main(["--dataset", "sysu_mm01", "--root", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "sysu_mm01" in err and str(tmp_path / "none") in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "sysu_mm01", "--epochs", "3"])
    assert exit_info.value.code == 2 and "error: unrecognized arguments: --epochs\n" in capsys.readouterr().err
    assert train(data_root, finished_run, ["--max_epochs", "2"], ["VI_TRAIN.LR", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "was written by a different training run (VI_TRAIN.LR: 0.1 -> 0.05)" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# train_reid.py --dataset sysu_mm01 | regdb: the same run
# ------------------------------------------------------------------------------------------------
def test_train_reid_routes_sysu_to_this_trainer_with_the_same_files_and_weights(finished_run, data_root, tmp_path):
    import train_reid

    output = tmp_path / "routed"
    argv = ["--dataset", "sysu_mm01", "--root", str(data_root), "--output", str(output), *FLAGS, "--max_epochs", "2"]
    assert train_reid.main([*argv, *OPTS]) == 0
    assert set(os.listdir(output)) == set(os.listdir(finished_run))
    routed, direct = checkpoint_weights(output, 2), checkpoint_weights(finished_run, 2)
    assert all(torch.equal(routed[k], direct[k]) for k in direct)
    results = json.loads((output / "results.json").read_text())
    assert results["run"]["max_epochs"] == 2 and [e["epoch"] for e in results["epochs"]] == [0, 1]
    assert "MAX_EPOCHS: 2" in (output / "config.yaml").read_text()


def test_train_reid_maps_its_flags_to_the_cross_modality_keys(tmp_path, capsys):
    import train_reid

    cfg = train_reid.build_train_config("", [], {"DATASETS.NAMES": "regdb", "SOLVER.MAX_EPOCHS": 3})
    assert (cfg.VI_TRAIN.MAX_EPOCHS, cfg.SOLVER.MAX_EPOCHS) == (3, 120)
    assert cfg.OUTPUT_DIR == os.path.join("log", "regdb_train_vi")
    argv = ["--dataset", "regdb", "--root", str(tmp_path), "--output", str(tmp_path / "out"), "--no_progress"]
    assert train_reid.main([*argv, "--max_epochs", "0"]) == 2
    assert capsys.readouterr().err == (
        "train_reid.py: error: VI_TRAIN.MAX_EPOCHS (--max_epochs) must be an integer >= 1, got 0\n")
    assert train_reid.main([*argv, "--nproc_per_node", "2"]) == 2
    assert capsys.readouterr().err == (
        "train_reid.py: error: --nproc_per_node must be 1 for DATASETS.NAMES regdb (the cross-modality AGW trains "
        "in one process), got 2\n")
    assert not (tmp_path / "out").exists()
