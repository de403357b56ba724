"""protect_image.py on visible-infrared data sets (synthetic SYSU-MM01 and RegDB), end to end.

Scores are checked against an independent computation: features of the original images from the
network itself (the reference's test transform, ``net(x, x, modal)``'s L2-normalised BNNeck output),
then the reference's rules of ``evaluation.cross_modality`` per trial.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import protect_image
import recovery_attack
from data.datasets import build_dataset
from data.synthetic_vi import make_regdb, make_sysu_mm01
from data.transforms import build_vi_eval_transform
from engine.protect.run import build_protect_config
from engine.protect.run_store import RunStore
from evaluation.cross_modality import eval_regdb, eval_sysu
from modeling.agw_vi import EmbedNet

SIZE = (32, 16)
TINY = ["INPUT.IMG_SIZE", "[32, 16]", "MODEL.NAME", "resnet18_nl", "DATALOADER.NUM_WORKERS", "0",
        "PIXELFADE.NUM_GRIDS", "0", "TEST.IMS_PER_BATCH", "64"]
MODES = ("encry2encry", "clean2clean", "encry2clean", "clean2encry")
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "short_list")


def save_checkpoint(path, seed):
    """An untrained resnet18_nl embed_net in the reference's train.py file layout."""
    torch.manual_seed(seed)
    net = EmbedNet(6, "resnet18_nl")
    torch.save({"net": net.state_dict(), "cmc": np.linspace(0, 1, 20, dtype=np.float32), "mAP": np.float64(0.5),
                "mINP": np.float64(0.25), "epoch": 1}, path)
    return str(path)


def load_net(path):
    net = EmbedNet(0, "resnet18_nl")
    state = {k: v for k, v in torch.load(path, weights_only=False)["net"].items() if not k.startswith("classifier")}
    net.load_state_dict(state)
    return net.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vi")
    make_sysu_mm01(str(root / "sysu"), num_ids=12, images_per_id_cam=2, height=32, width=16)
    make_regdb(str(root / "regdb"), num_ids=8, images_per_id_cam=2, height=32, width=16, num_trials=3)
    checkpoints = {seed: save_checkpoint(root / f"regdb_trial_{seed}_best.t", seed) for seed in (1, 2)}
    return {"sysu": str(root / "sysu"), "regdb": str(root / "regdb"), "ckpt": checkpoints[1],
            "trial_ckpt": str(root / "regdb_trial_{trial}_best.t")}


def protect(dataset, root, checkpoint, output, *extra):
    argv = ["--dataset", dataset, "--root", root, "--reid_ckpt_path", checkpoint, "--output", str(output),
            "--max_iter", "2", "--warmup_iter", "1", "--fade_num_iter", "2", "--batch_size", "8", "--no_progress"]
    return protect_image.main(argv + list(extra) + TINY)


def results(output):
    return json.loads((output / "results.json").read_text())


def reference_features(net, records, modal):
    """{path: L2-normalised BNNeck feature} as the reference's test code extracts them."""
    transform = build_vi_eval_transform(SIZE)
    batch = torch.stack([transform(Image.open(r.path)) for r in records])
    with torch.no_grad():
        return dict(zip([r.path for r in records], net(batch, batch, modal)[1].double().numpy()))


def reference_scores(metric, trial, features):
    query = np.stack([features[r.path] for r in trial.query])
    gallery = np.stack([features[r.path] for r in trial.gallery])
    distmat = -query @ gallery.T
    q_pids, g_pids = [r.pid for r in trial.query], [r.pid for r in trial.gallery]
    if metric == "sysu":
        scores = eval_sysu(distmat, q_pids, g_pids, [r.camid + 1 for r in trial.query],
                           [r.camid + 1 for r in trial.gallery])
    else:
        scores = eval_regdb(distmat, q_pids, g_pids)
    return {"rank1": scores.cmc[0], "rank5": scores.cmc[4], "mAP": scores.mAP, "mINP": scores.mINP}


def clean_features(dataset, net):
    records = dataset.test_images()
    features = reference_features(net, [r for r in records if r.modality == "visible"], 1)
    features.update(reference_features(net, [r for r in records if r.modality == "infrared"], 2))
    return features


def assert_scores_equal(expected, actual):
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


@pytest.fixture(scope="module")
def sysu_run(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "sysu"
    assert protect("sysu_mm01", data["sysu"], data["ckpt"], output, "--save_image_npy", "--train_order",
                   "every_image", "DATASETS.TRIALS", "[0, 1]") == 0
    return output


def test_sysu_results_have_every_protocol_mode_and_trial(sysu_run):
    out = results(sysu_run)
    assert out["reid_primary_protocol"] == "all_search"
    assert set(out["reid_protocols"]) == {"all_search", "indoor_search"}
    for protocol, modes in out["reid_protocols"].items():
        assert set(modes) == set(MODES)
        for mode, scores in modes.items():
            assert set(scores) == set(METRICS) and scores["short_list"] is True
            trials = out["reid_trials"][protocol][mode]
            assert [entry["trial"] for entry in trials] == [0, 1]
            assert scores["mAP"] == pytest.approx(np.mean([entry["mAP"] for entry in trials]))
    assert out["reid"] == out["reid_protocols"]["all_search"]
    assert set(out["protection"]) == {"train_infrared", "train_visible", "test_infrared", "test_visible"}
    by_modality = out["protection_modalities"]
    assert set(by_modality) == {"visible", "infrared", "overall"}
    assert by_modality["visible"]["feature_mse"] == pytest.approx(out["protection"]["test_visible"]["feature_mse"])
    markdown = (sysu_run / "results.md").read_text()
    assert "**indoor_search** (infrared queries" in markdown and "| infrared |" in markdown
    manifest = (sysu_run / "manifest.json").read_text()
    assert "MODEL.VI_FEATURE" in manifest and "agw_vi test transform" in manifest


def test_sysu_clean2clean_equals_the_reference_computation(sysu_run, data):
    dataset = build_dataset("sysu_mm01", data["sysu"], trials=[0, 1])
    features = clean_features(dataset, load_net(data["ckpt"]))
    out = results(sysu_run)
    for protocol, trials in dataset.protocols.items():
        expected = [reference_scores("sysu", trial, features) for trial in trials]
        for entry, scores in zip(out["reid_trials"][protocol]["clean2clean"], expected):
            assert_scores_equal(scores, entry)
        mean = {key: np.mean([scores[key] for scores in expected]) for key in expected[0]}
        assert_scores_equal(mean, out["reid_protocols"][protocol]["clean2clean"])


def test_each_image_is_protected_once_with_its_own_stem(sysu_run, data):
    dataset = build_dataset("sysu_mm01", data["sysu"], trials=[0, 1])
    store = RunStore(str(sysu_run))
    net = load_net(data["ckpt"])
    # The attack's test pairs are the first trial's query and gallery images, each once.
    first_trial = {os.path.relpath(r.path, dataset.root) for trials in dataset.protocols.values()
                   for t in trials if t.trial == 0 for r in (*t.query, *t.gallery)}
    protected_paths, paired_paths = [], []
    # Infrared (the query modality) comes first: test pairs 0..n-1 are its batches, queries then gallery.
    offset = 0
    for split, modal, other in (("test_infrared", 2, 1), ("test_visible", 1, 2)):
        batch = 0
        while os.path.exists(store.record_path(split, batch)):
            record = store.load_batch(split, batch)
            protected_paths += record["items"]
            kept = [row for row, item in enumerate(record["items"]) if item in first_trial]
            pair_file = sysu_run / "img_npy" / f"encry-test-{offset + batch}-images.npy"
            assert pair_file.exists() == bool(kept)
            if kept:
                paired_paths += [record["items"][row] for row in kept]
                images = torch.from_numpy(np.load(pair_file))
                with torch.no_grad():
                    own = net.features(images, images, modal)[1]
                    wrong = net.features(images, images, other)[1]
                assert torch.allclose(record["protected_features"][kept], own, atol=1e-4)
                assert not torch.allclose(record["protected_features"][kept], wrong, atol=1e-2)
            batch += 1
        offset += batch
    expected = sorted(os.path.relpath(r.path, dataset.root) for r in dataset.test_images())
    assert sorted(protected_paths) == expected
    assert sorted(paired_paths) == sorted(first_trial) and len(first_trial) < len(expected)
    assert results(sysu_run)["run"]["num_query"] == len(dataset.query)


def test_the_attack_trains_on_the_pairs_of_both_modalities(sysu_run, data, tmp_path):
    dataset = build_dataset("sysu_mm01", data["sysu"], trials=[0, 1])
    names = [name for name in os.listdir(sysu_run / "img_npy") if name.startswith("train-") and name.endswith("-ids.npy")]
    ids = np.concatenate([np.load(sysu_run / "img_npy" / f"train-{i}-ids.npy") for i in range(len(names))])
    assert sorted(ids.tolist()) == sorted(r.pid for r in dataset.train)
    assert recovery_attack.main(["--npy_path", str(sysu_run), "--output", str(tmp_path / "attack"),
                                 "--total_epochs", "1", "--generator", "resnet_6blocks", "--device", "cpu",
                                 "--no_progress", "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "0",
                                 "DATALOADER.NUM_WORKERS", "0"]) == 0
    # each test pair's saved modality is its camera's (SYSU cam3, cam6 are infrared), and the attack scores both
    counts = {"visible": 0, "infrared": 0}
    for name in os.listdir(sysu_run / "img_npy"):
        if name.startswith("test-") and name.endswith("-camids.npy"):
            camids = np.load(sysu_run / "img_npy" / name)
            modalities = np.load(sysu_run / "img_npy" / name.replace("-camids.npy", "-modality.npy"))
            assert modalities.tolist() == ["infrared" if camid + 1 in (3, 6) else "visible" for camid in camids]
            for modality in modalities.tolist():
                counts[modality] += 1
    record = json.loads((tmp_path / "attack" / "attack_results.json").read_text())["reference"]["evaluations"]["0"]
    assert {m: part["num_images"] for m, part in record["per_modality"].items()} == counts
    assert min(counts.values()) > 0 and record["num_images"] == sum(counts.values())


def test_regdb_per_trial_checkpoints_score_each_trial_with_its_model(data, tmp_path):
    output = tmp_path / "regdb"
    assert protect("regdb", data["regdb"], data["trial_ckpt"], output, "DATASETS.TRIALS", "[1, 2]",
                   "MODEL.VI_FEATURE", "pool") == 0
    out = results(output)
    assert sorted(os.listdir(output / "records")) == [
        "test_t1_infrared-0.pt", "test_t1_visible-0.pt", "test_t2_infrared-0.pt", "test_t2_visible-0.pt"]
    dataset = build_dataset("regdb", data["regdb"], trials=[1, 2])
    nets = {trial: load_net(data["trial_ckpt"].format(trial=trial)) for trial in (1, 2)}
    for protocol, trials in dataset.protocols.items():
        for trial, entry in zip(trials, out["reid_trials"][protocol]["clean2clean"]):
            own = reference_scores("regdb", trial, clean_features(dataset, nets[trial.trial]))
            other = reference_scores("regdb", trial, clean_features(dataset, nets[3 - trial.trial]))
            assert_scores_equal(own, entry)
            assert own != other
    # MODEL.VI_FEATURE pool is constrained, the BNNeck feature scored: both are in the record.
    record = RunStore(str(output)).load_batch("test_t1_visible", 0)
    assert record["eval0_original_features"].shape == record["original_features"].shape
    assert not torch.allclose(record["eval0_original_features"], record["original_features"])


class Interruption(BaseException):
    """Stands for a crash or Ctrl-C in the middle of a run."""


def test_an_interrupted_regdb_run_resumes_to_the_same_results(data, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert protect("regdb", data["regdb"], data["ckpt"], full, "DATASETS.TRIALS", "[1, 2]") == 0
    real_save = RunStore.save_record

    def crash(self, split, batch_index, record):
        if split == "test_infrared":
            raise Interruption()
        real_save(self, split, batch_index, record)

    output = tmp_path / "resumed"
    monkeypatch.setattr(RunStore, "save_record", crash)
    with pytest.raises(Interruption):
        protect("regdb", data["regdb"], data["ckpt"], output, "DATASETS.TRIALS", "[1, 2]")
    finished = sorted(os.listdir(output / "records"))
    assert finished and all(name.startswith("test_visible-") for name in finished)
    monkeypatch.setattr(RunStore, "save_record", real_save)
    assert protect("regdb", data["regdb"], data["ckpt"], output, "DATASETS.TRIALS", "[1, 2]") == 0
    assert "resumed run" in (output / "log.txt").read_text()
    resumed, expected = results(output), results(full)
    for key in ("reid", "reid_protocols", "reid_trials", "protection_modalities"):
        assert resumed[key] == expected[key], key
    dataset = build_dataset("regdb", data["regdb"], trials=[1, 2])
    features = clean_features(dataset, load_net(data["ckpt"]))
    for trial, entry in zip(dataset.protocols["thermal_to_visible"], expected["reid_trials"]["thermal_to_visible"][
            "clean2clean"]):
        assert_scores_equal(reference_scores("regdb", trial, features), entry)


def test_the_agw_vi_input_contract_is_the_default_for_visible_infrared_sets():
    def size(*argv):
        return list(build_protect_config("", list(argv), {"OUTPUT_DIR": "x"}).INPUT.IMG_SIZE)

    assert size("DATASETS.NAMES", "sysu_mm01") == [288, 144]
    assert size("DATASETS.NAMES", "regdb", "INPUT.IMG_SIZE", "[64, 32]") == [64, 32]
    assert size("DATASETS.NAMES", "market1501") == [256, 128]


def test_a_size_set_in_the_config_file_beats_the_agw_vi_default(tmp_path):
    config_file = tmp_path / "vi.yml"
    config_file.write_text("DATASETS:\n  NAMES: sysu_mm01\nINPUT:\n  IMG_SIZE: [64, 32]\n")
    assert list(build_protect_config(str(config_file), [], {"OUTPUT_DIR": "x"}).INPUT.IMG_SIZE) == [64, 32]


def one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("protect_image.py: error: "), err
    for word in words:
        assert word in err[0], (word, err[0])


def copy_tree(source, target):
    shutil.copytree(source, target)
    return str(target)


def test_bad_inputs_stop_before_anything_is_written(data, tmp_path, capsys):
    output = tmp_path / "out"
    assert protect("regdb", data["regdb"], data["trial_ckpt"], output, "DATASETS.TRIALS", "[1, 3]") == 2
    one_error_line(capsys, "trial 3 not found", "regdb_trial_3_best.t")
    regdb = copy_tree(data["regdb"], tmp_path / "regdb")
    with open(os.path.join(regdb, "RegDB", "idx", "test_thermal_2.txt"), "a", encoding="utf-8") as handle:
        handle.write("Thermal/1/thermal_1_1.jpg  0\n")
    assert protect("regdb", regdb, data["ckpt"], output, "DATASETS.TRIALS", "[2]") == 2
    one_error_line(capsys, "test_thermal_2.txt line", "<integer label>")
    sysu = copy_tree(data["sysu"], tmp_path / "sysu")
    with open(os.path.join(sysu, "SYSU-MM01", "exp", "test_id.txt"), "a", encoding="utf-8") as handle:
        handle.write("12\n")
    assert protect("sysu_mm01", sysu, data["ckpt"], output) == 2
    one_error_line(capsys, "test_id.txt", "one line of comma-separated")
    os.rename(os.path.join(sysu, "SYSU-MM01", "cam6"), os.path.join(sysu, "SYSU-MM01", "gone"))
    assert protect("sysu_mm01", sysu, data["ckpt"], output) == 2
    one_error_line(capsys, "cam6")
    assert protect("market1501", data["regdb"], data["trial_ckpt"], output) == 2
    one_error_line(capsys, "TEST.WEIGHT", "{trial}")
    assert not output.exists()


def test_the_attack_on_regdb_pairs_scores_each_modality_of_the_trials_test_images(data, tmp_path):
    output = tmp_path / "regdb"
    assert protect("regdb", data["regdb"], data["ckpt"], output, "--save_image_npy", "--train_order",
                   "every_image", "DATASETS.TRIALS", "[1]") == 0
    assert recovery_attack.main(["--npy_path", str(output), "--total_epochs", "1", "--generator", "resnet_6blocks",
                                 "--device", "cpu", "--no_progress", "ATTACK.NGF", "4", "ATTACK.NUM_GRIDS", "0",
                                 "DATALOADER.NUM_WORKERS", "0"]) == 0
    trial = build_dataset("regdb", data["regdb"], trials=[1]).protocols["visible_to_thermal"][0]
    record = json.loads((output / "attack_results.json").read_text())["reference"]["evaluations"]["0"]
    assert {m: part["num_images"] for m, part in record["per_modality"].items()} == {
        "visible": len(trial.query), "infrared": len(trial.gallery)}
    markdown = (output / "attack_results.md").read_text()
    assert f"| reference | 0 | {len(trial.gallery)} | recovered (infrared) |" in markdown
