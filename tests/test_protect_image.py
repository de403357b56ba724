"""protect_image.py end to end on a tiny synthetic Market-1501: outputs, resume, errors, processes."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import protect_image
from configs import load_config
from data.synthetic import make_market1501
from engine.run_store import RunStore
from modeling import build_authorization_model

TINY = ["INPUT.IMG_SIZE", "[32, 16]", "DATALOADER.NUM_WORKERS", "0", "PIXELFADE.NUM_GRIDS", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)
    return str(root)


def protect(data_root, output, *extra, opts=()):
    argv = ["--random_init", "--root", data_root, "--output", str(output), "--batch_size", "4",
            "--max_iter", "2", "--warmup_iter", "1", "--fade_num_iter", "2", "--device", "cpu",
            "--no_progress", *extra, *TINY, *opts]
    return protect_image.main(argv)


def results(output):
    with open(os.path.join(output, "results.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "full"
    assert protect(data_root, output, "--save_image_npy", "--save_png") == 0
    return output


def test_outputs_follow_the_reference_layout(full_run):
    npy = full_run / "img_npy"
    names = sorted(os.listdir(npy))
    test_batches = len([n for n in names if n.startswith("encry-test-")])
    train_batches = len([n for n in names if n.startswith("encry-train-")])
    assert test_batches >= 2 and train_batches >= 1
    for i in range(test_batches):
        clean = np.load(npy / f"clean-test-{i}-images.npy")
        protected = np.load(npy / f"encry-test-{i}-images.npy")
        ids = np.load(npy / f"test-{i}-ids.npy")
        camids = np.load(npy / f"test-{i}-camids.npy")
        assert clean.dtype == np.float32 and clean.shape == protected.shape and clean.shape[1:] == (3, 32, 16)
        assert len(ids) == len(camids) == clean.shape[0]
        assert not np.allclose(clean, protected)
    assert not os.path.exists(npy / "train-0-camids.npy")
    assert os.path.exists(full_run / "imgs" / "test_0.png") and os.path.exists(full_run / "imgs" / "train_0.png")
    assert not os.path.exists(full_run / "imgs" / "test_1.png")
    saved = load_config(str(full_run / "config.yaml"))
    assert saved.PIXELFADE.MAX_ITER == 2 and saved.PIXELFADE.SAVE_IMAGE_NPY
    assert "new run" in (full_run / "log.txt").read_text()


def test_results_hold_four_modes_png_storage_and_statistics(full_run):
    report = results(full_run)
    for table in ("reid", "reid_stored_png"):
        assert list(report[table]) == ["encry2encry", "clean2clean", "encry2clean", "clean2encry"]
        for scores in report[table].values():
            assert 0.0 <= scores["mAP"] <= 1.0 and 0.0 <= scores["rank1"] <= 1.0
    assert report["reid"]["clean2clean"] == report["reid_stored_png"]["clean2clean"]
    assert set(report["protection"]) == {"train", "test"}
    assert report["protection"]["test"]["feature_mse"] > 0
    assert "UNTRAINED" in report["run"]["checkpoint"]
    markdown = (full_run / "results.md").read_text()
    assert "| encry2clean |" in markdown and "8-bit PNG" in markdown
    num_test = sum(1 for line in (full_run / "protection_stats_test.csv").read_text().splitlines()[1:])
    assert len(os.listdir(full_run / "png" / "test")) == num_test


def test_scored_features_are_those_of_the_final_protected_images(full_run):
    """The reference scores the feature of the step before the last update; we score the stored image."""
    cfg = load_config("", TINY)
    model = build_authorization_model(cfg, "", "cpu")
    protected = torch.from_numpy(np.load(full_run / "img_npy" / "encry-test-1-images.npy"))
    record = RunStore(str(full_run)).load_batch("test", 1)
    with torch.no_grad():
        expected = model(protected)
    assert torch.allclose(record["protected_features"], expected, atol=1e-4, rtol=1e-4)


def test_an_interrupted_run_resumes_to_the_same_results(data_root, full_run, tmp_path, monkeypatch):
    output = tmp_path / "interrupted"
    real_save = RunStore.save_record
    calls = []

    def crash_after_two(self, split, batch_index, record):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append((split, batch_index))
        real_save(self, split, batch_index, record)

    monkeypatch.setattr(RunStore, "save_record", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        protect(data_root, output, "--save_image_npy", "--save_png")
    assert len(os.listdir(output / "records")) == 2 and not os.path.exists(output / "results.json")
    monkeypatch.setattr(RunStore, "save_record", real_save)
    assert protect(data_root, output, "--save_image_npy", "--save_png") == 0
    assert "resumed run" in (output / "log.txt").read_text()
    assert results(output)["reid"] == results(full_run)["reid"]
    for name in os.listdir(full_run / "img_npy"):
        assert np.array_equal(np.load(output / "img_npy" / name), np.load(full_run / "img_npy" / name)), name


def test_another_runs_output_folder_is_refused_and_left_alone(data_root, full_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    before = {name: os.path.getmtime(copy / "records" / name) for name in os.listdir(copy / "records")}
    assert protect(data_root, copy, "--save_image_npy", "--save_png", "--beta", "0.02") == 2
    error = capsys.readouterr().err
    assert "holds a different run's files" in error and "BETA" in error
    assert before == {name: os.path.getmtime(copy / "records" / name) for name in os.listdir(copy / "records")}


def test_missing_checkpoint_and_missing_data_are_clear_errors(data_root, tmp_path, capsys):
    argv = ["--root", data_root, "--output", str(tmp_path / "a"), "--reid_ckpt_path", str(tmp_path / "none.pth"), "--no_progress", *TINY]
    assert protect_image.main(argv) == 2
    assert f"Re-ID checkpoint not found: {tmp_path / 'none.pth'}" in capsys.readouterr().err
    assert protect_image.main(["--root", data_root, "--output", str(tmp_path / "b"), "--no_progress", *TINY]) == 2
    assert "pass --reid_ckpt_path" in capsys.readouterr().err
    assert protect(str(tmp_path / "nowhere"), tmp_path / "c") == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_an_unreadable_image_names_the_file_and_keeps_finished_batches(data_root, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(data_root, root)
    gallery = root / "market1501" / "bounding_box_test"
    victim = sorted(os.listdir(gallery))[-1]
    (gallery / victim).write_bytes(b"not a jpeg")
    assert protect(str(root), tmp_path / "out") == 2
    assert victim in capsys.readouterr().err
    assert len(os.listdir(tmp_path / "out" / "records")) >= 1


def test_baseline_methods_run_through_the_same_outputs(data_root, tmp_path):
    assert protect(data_root, tmp_path / "blur", "--method", "blur", "--blur_sigma", "2") == 0
    report = results(tmp_path / "blur")
    assert report["run"]["method"] == "blur" and report["protection"]["test"]["noise_share"] == 0.0
    assert set(report["reid"]) == {"encry2encry", "clean2clean", "encry2clean", "clean2encry"}


def test_a_plain_image_folder_gets_protected_pngs_and_features(data_root, tmp_path):
    folder = tmp_path / "gallery" / "cam1"
    folder.mkdir(parents=True)
    source = os.path.join(data_root, "market1501", "query")
    for name in sorted(os.listdir(source))[:3]:
        shutil.copy(os.path.join(source, name), folder / name)
    output = tmp_path / "out"
    argv = ["--random_init", "--image_folder", str(tmp_path / "gallery"), "--output", str(output),
            "--batch_size", "2", "--max_iter", "2", "--device", "cpu", "--no_progress", *TINY]
    assert protect_image.main(argv) == 0
    written = sorted(os.listdir(output / "protected" / "cam1"))
    assert written == sorted(os.path.splitext(n)[0] + ".png" for n in os.listdir(folder))
    features = torch.load(output / "features" / "features.pt", weights_only=True)
    assert features["protected"].shape == (3, 2048) and len(features["paths"]) == 3
    assert "reid" not in results(output)


def test_two_gloo_processes_equal_one_process_in_per_image_mode(data_root, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    assert protect(data_root, single, "--mode", "per_image") == 0
    assert protect(data_root, double, "--mode", "per_image", "--nproc_per_node", "2", "--backend", "gloo") == 0
    assert results(double)["run"]["processes"] == 2
    assert results(single)["reid"] == results(double)["reid"]
    store_one, store_two = RunStore(str(single)), RunStore(str(double))
    for name in sorted(os.listdir(single / "records")):
        split, index = name[:-3].rsplit("-", 1)
        one, two = store_one.load_batch(split, int(index)), store_two.load_batch(split, int(index))
        assert torch.equal(one["indices"], two["indices"])
        assert torch.equal(one["protected_features"], two["protected_features"])


def test_a_diverging_batch_stops_the_run_with_a_clear_error_and_keeps_earlier_batches(data_root, tmp_path, monkeypatch, capsys):
    from engine.batch_protector import BatchProtector, ProtectedBatch

    real_call = BatchProtector.__call__

    def diverge_on_second_batch(self, original, indices):
        if int(indices[0]) > 0:
            return ProtectedBatch(original * float("nan"), None)
        return real_call(self, original, indices)

    monkeypatch.setattr(BatchProtector, "__call__", diverge_on_second_batch)
    output = tmp_path / "nan"
    assert protect(data_root, output) == 2
    error = capsys.readouterr().err
    assert "non-finite feature loss in test batch 1" in error
    assert os.listdir(output / "records") == ["test-0.pt"]
