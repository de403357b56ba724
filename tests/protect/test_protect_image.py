"""protect_image.py end to end on a tiny synthetic Market-1501: outputs, resume, errors, processes."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import REPO, protect_argv
from PIL import Image

import protect_image
from configs import load_config
from data import img_npy
from data.synthetic import make_market1501
from engine.protect.run_store import RunStore
from modeling import build_authorization_model
from utils import file_io
from utils.file_io import FolderLock

TINY = ["INPUT.IMG_SIZE", "[32, 16]", "DATALOADER.NUM_WORKERS", "0", "PIXELFADE.NUM_GRIDS", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=3)
    return str(root)


def protect(data_root, output, *extra, opts=()):
    """A tiny run: 2 steps, warm-up 1, K 2, one grid per split; ``opts`` are more KEY VALUE pairs."""
    argv = protect_argv(data_root, output, "--warmup_iter", "1", "--fade_num_iter", "2", *extra)
    return protect_image.main(argv + ["PIXELFADE.NUM_GRIDS", "1", *opts])


def error_line(captured):
    """The one error line of a failed run (log lines may come before it on stderr)."""
    lines = [line for line in captured.err.splitlines() if line.startswith("protect_image.py: error")]
    assert len(lines) == 1, captured.err
    return lines[0]


def results(output):
    with open(os.path.join(output, "results.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "full"
    assert protect(data_root, output, "--save_image_npy", "--save_png") == 0
    return output


def independent_map(features, pids, camids, num_query):
    """mAP written out per query: L2-normalised features, Euclidean distance, same pid+cam removed."""
    features = torch.nn.functional.normalize(features, dim=1)
    query, gallery = features[:num_query], features[num_query:]
    aps = []
    for q in range(num_query):
        distances = torch.cdist(query[q : q + 1], gallery)[0].tolist()
        entries = [
            (d, g)
            for g, d in enumerate(distances)
            if not (pids[num_query + g] == pids[q] and camids[num_query + g] == camids[q])
        ]
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        hits, precisions = 0, []
        for rank, (_, g) in enumerate(entries, start=1):
            if pids[num_query + g] == pids[q]:
                hits += 1
                precisions.append(hits / rank)
        if hits:
            aps.append(sum(precisions) / hits)
    return sum(aps) / len(aps)


def test_outputs_follow_the_reference_layout(full_run):
    npy = full_run / "img_npy"
    names = sorted(os.listdir(npy))
    # 10 test images (4 queries, 6 gallery) in batches of 4; 2 train identities x 4 images, 1 identity per batch.
    assert sorted(n for n in names if n.startswith("encry-test-")) == [f"encry-test-{i}-images.npy" for i in range(3)]
    assert sorted(n for n in names if n.startswith("encry-train-")) == [f"encry-train-{i}-images.npy" for i in range(2)]
    for i, size in enumerate([4, 4, 2]):
        clean, protected, ids, camids = img_npy.read_batch(str(npy), "test", i)
        assert clean.dtype == np.float32 and clean.shape == protected.shape == (size, 3, 32, 16)
        assert len(ids) == len(camids) == size
        # The reference clamps to the batch's value range, and the run replaced values with noise.
        assert protected.min() >= clean.min() and protected.max() <= clean.max()
        assert (protected != clean).mean() > 0.5
    for i in range(2):
        batch = img_npy.read_batch(str(npy), "train", i)
        assert len(set(batch.ids.tolist())) == 1 and batch.camids is None
    assert sorted(os.listdir(full_run / "imgs")) == ["test_0.png", "train_0.png"]
    saved = load_config(str(full_run / "config.yaml"))
    assert saved.PIXELFADE.MAX_ITER == 2 and saved.PIXELFADE.SAVE_IMAGE_NPY
    assert "new run" in (full_run / "log.txt").read_text()


def test_results_hold_four_modes_png_storage_and_statistics(full_run):
    report = results(full_run)
    store = RunStore(str(full_run))
    records = [store.load_batch("test", i) for i in range(3)]
    original = torch.cat([r["original_features"] for r in records])
    protected = torch.cat([r["protected_features"] for r in records])
    pids = torch.cat([r["pids"] for r in records]).tolist()
    camids = torch.cat([r["camids"] for r in records]).tolist()
    expected = {
        "clean2clean": independent_map(original, pids, camids, 4),
        "encry2encry": independent_map(protected, pids, camids, 4),
        "encry2clean": independent_map(torch.cat([protected[:4], original[4:]]), pids, camids, 4),
        "clean2encry": independent_map(torch.cat([original[:4], protected[4:]]), pids, camids, 4),
    }
    for mode, value in expected.items():
        assert report["reid"][mode]["mAP"] == pytest.approx(value, abs=1e-6), mode
    assert list(report["reid_stored_png"]) == ["encry2encry", "clean2clean", "encry2clean", "clean2encry"]
    assert report["reid"]["clean2clean"] == report["reid_stored_png"]["clean2clean"]
    assert set(report["protection"]) == {"train", "test"}
    mse = ((protected - original) ** 2).mean(dim=1)
    assert report["protection"]["test"]["feature_mse"] == pytest.approx(float(mse.mean()), rel=1e-6)
    assert report["protection"]["test"]["share_above_epsilon"] == pytest.approx(float((mse > 0.03).float().mean()))
    assert "UNTRAINED" in report["run"]["checkpoint"]
    markdown = (full_run / "results.md").read_text()
    assert "| encry2clean |" in markdown and "8-bit PNG" in markdown
    rows = (full_run / "protection_stats_test.csv").read_text().splitlines()
    assert rows[0] == "index,path,flipped,pid,camid,feature_mse,cosine,noise_share,closer_to_noise,constraint_held"
    held = torch.cat([r["constraint_held"] for r in records])
    # Reference mode: one batch-level test per step, so every image of a batch shares its share of 2 steps.
    assert set(held.tolist()) <= {0.0, 0.5, 1.0}
    assert report["protection"]["test"]["constraint_held"] == pytest.approx(float(held.mean()))
    assert len(rows) == 11 and rows[1].split(",")[1].startswith("query" + os.sep)
    assert len(os.listdir(full_run / "png" / "test")) == 10


def test_scored_features_are_those_of_the_final_protected_images(full_run):
    """The reference scores the feature of the step before the last update; we score the stored image."""
    cfg = load_config("", TINY)
    model = build_authorization_model(cfg, "", "cpu")
    protected = torch.from_numpy(img_npy.read_batch(str(full_run / "img_npy"), "test", 1).protected)
    record = RunStore(str(full_run)).load_batch("test", 1)
    with torch.no_grad():
        expected = model(protected)
    assert torch.allclose(record["protected_features"], expected, atol=1e-4, rtol=1e-4)


def record_times(output):
    folder = output / "records"
    return {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)}


def crash_when_saving(monkeypatch, crash_at):
    """Make RunStore.save_record raise when it is about to save batch ``crash_at``; returns the saved list."""
    real_save = RunStore.save_record
    saved = []

    def save(self, split, batch_index, record):
        if (split, batch_index) == crash_at:
            raise KeyboardInterrupt("simulated interruption")
        saved.append((split, batch_index))
        real_save(self, split, batch_index, record)

    monkeypatch.setattr(RunStore, "save_record", save)
    return real_save, saved


@pytest.mark.parametrize(
    "crash_at, finished",
    [
        (("train", 1), ["train-0.pt"]),
        (("test", 1), ["test-0.pt", "train-0.pt", "train-1.pt"]),
    ],
)
def test_a_run_interrupted_inside_a_split_resumes_to_the_same_results(
    data_root, full_run, tmp_path, monkeypatch, crash_at, finished
):
    output = tmp_path / "interrupted"
    real_save, _ = crash_when_saving(monkeypatch, crash_at)
    assert protect(data_root, output, "--save_image_npy", "--save_png") == 130  # Ctrl-C: one line, exit 130
    assert sorted(os.listdir(output / "records")) == finished and not os.path.exists(output / "results.json")
    before = record_times(output)
    monkeypatch.setattr(RunStore, "save_record", real_save)
    time.sleep(0.01)
    assert protect(data_root, output, "--save_image_npy", "--save_png") == 0
    after = record_times(output)
    assert {name: after[name] for name in before} == before, "finished batches were written again"
    assert sorted(after) == sorted(os.listdir(full_run / "records"))
    assert "resumed run" in (output / "log.txt").read_text()
    assert results(output)["reid"] == results(full_run)["reid"]
    assert sorted(os.listdir(output / "img_npy")) == sorted(os.listdir(full_run / "img_npy"))
    for name in os.listdir(full_run / "img_npy"):
        assert np.array_equal(np.load(output / "img_npy" / name), np.load(full_run / "img_npy" / name)), name


def test_another_runs_output_folder_is_refused_naming_each_key_and_left_alone(data_root, full_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    before = record_times(copy)
    assert protect(data_root, copy, "--save_image_npy", "--save_png", "--beta", "0.02", "--epsilon", "0.05") == 2
    error = error_line(capsys.readouterr())
    assert "PIXELFADE.BETA: 0.01 there, 0.02 now" in error and "PIXELFADE.EPSILON: 0.03 there, 0.05 now" in error
    assert before == record_times(copy)


def test_a_moved_data_set_resumes_without_protecting_again(data_root, full_run, tmp_path):
    moved_root = tmp_path / "moved"
    shutil.copytree(data_root, moved_root)
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    before = record_times(copy)
    assert protect(str(moved_root), copy, "--save_image_npy", "--save_png") == 0
    assert record_times(copy) == before
    assert results(copy)["reid"] == results(full_run)["reid"]


def test_missing_checkpoint_and_missing_data_are_clear_errors(data_root, tmp_path, capsys):
    argv = [
        "--root",
        data_root,
        "--output",
        str(tmp_path / "a"),
        "--reid_ckpt_path",
        str(tmp_path / "none.pth"),
        "--no_progress",
        *TINY,
    ]
    assert protect_image.main(argv) == 2
    assert f"Re-ID checkpoint not found: {tmp_path / 'none.pth'}" in capsys.readouterr().err
    assert protect_image.main(["--root", data_root, "--output", str(tmp_path / "b"), "--no_progress", *TINY]) == 2
    assert "pass --reid_ckpt_path" in capsys.readouterr().err
    assert protect(str(tmp_path / "nowhere"), tmp_path / "c") == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []


def test_unreadable_images_are_all_named_before_anything_is_written(data_root, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(data_root, root)
    gallery = root / "market1501" / "bounding_box_test"
    victims = sorted(os.listdir(gallery))[-2:]
    (gallery / victims[0]).write_bytes(b"not a jpeg")
    (gallery / victims[1]).write_bytes(b"")
    assert protect(str(root), tmp_path / "out") == 2
    error = error_line(capsys.readouterr())
    assert "2 of 10 images cannot be read" in error and victims[0] in error and victims[1] in error
    assert not os.path.exists(tmp_path / "out")


def test_deleting_a_bad_image_keeps_the_batches_before_it(data_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    output = tmp_path / "out"
    real_save, _ = crash_when_saving(monkeypatch, ("test", 2))
    assert protect(str(root), output) == 130
    before = record_times(output)
    assert sorted(before) == ["test-0.pt", "test-1.pt"]
    monkeypatch.setattr(RunStore, "save_record", real_save)
    gallery = root / "market1501" / "bounding_box_test"
    os.remove(gallery / sorted(os.listdir(gallery))[-1])
    assert protect(str(root), output) == 0
    after = record_times(output)
    assert after["test-0.pt"] == before["test-0.pt"] and after["test-1.pt"] == before["test-1.pt"]
    fresh = tmp_path / "fresh"
    assert protect(str(root), fresh) == 0
    assert results(output)["reid"] == results(fresh)["reid"]


def test_bad_settings_are_refused_before_anything_is_written(data_root, tmp_path, capsys):
    cases = [
        (["--batch_size", "0"], "PIXELFADE.BATCH_SIZE (--batch_size) must be an integer >= 1, got 0"),
        (["--epsilon", "-0.1"], "PIXELFADE.EPSILON (--epsilon) must be a positive finite number, got -0.1"),
        (["--momentum_w", "1.5"], "PIXELFADE.MOMENTUM (--momentum_w) must be a number in [0, 1), got 1.5"),
        (["--num_workers", "-1"], "DATALOADER.NUM_WORKERS (--num_workers) must be an integer >= 0, got -1"),
        (["--mosaic_block", "0"], "PIXELFADE.MOSAIC_BLOCK (--mosaic_block) must be an integer >= 1, got 0"),
        (
            ["PIXELFADE.TRAIN_ORDER", "shuffled"],
            "PIXELFADE.TRAIN_ORDER (--train_order) must be one of identity_balanced, every_image",
        ),
        (["TEST.DISTANCE", "manhattan"], "TEST.DISTANCE must be one of euclidean, cosine, got 'manhattan'"),
    ]
    for arguments, message in cases:
        output = tmp_path / "out"
        assert protect(data_root, output, *arguments) == 2, arguments
        assert message in error_line(capsys.readouterr())
        assert not os.path.exists(output)
    assert protect(data_root, tmp_path / "out") == 0


def test_a_locked_output_folder_is_refused_naming_the_holder(data_root, tmp_path, capsys):
    output = tmp_path / "busy"
    with FolderLock(str(output), "another run"):
        assert protect(data_root, output) == 2
    assert f"output folder {output} is being written by process {os.getpid()} (another run)" in capsys.readouterr().err
    assert os.listdir(output) == [".lock"]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied")])
def test_os_errors_are_one_line_naming_the_file_and_leave_no_temporary_file(
    data_root, tmp_path, monkeypatch, capsys, code, words
):
    real_replace = os.replace

    def failing_replace(src, dst):
        if dst.endswith("test-1.pt"):
            raise OSError(code, os.strerror(code))
        real_replace(src, dst)

    monkeypatch.setattr(file_io.os, "replace", failing_replace)
    output = tmp_path / "out"
    assert protect(data_root, output) == 2
    assert (
        error_line(capsys.readouterr())
        == f"protect_image.py: error: cannot write {output / 'records' / 'test-1.pt'}: {words}"
    )
    assert sorted(os.listdir(output / "records")) == ["test-0.pt"]


def test_images_above_epsilon_are_reported_with_their_share(data_root, tmp_path):
    output = tmp_path / "loose"
    assert protect(data_root, output, "--epsilon", "1e-12") == 0
    assert results(output)["protection"]["test"]["share_above_epsilon"] == 1.0
    log = (output / "log.txt").read_text()
    assert "test: 100.0% of the images end with a feature MSE above EPSILON = 1e-12" in log
    assert "| images above EPSILON |" in (output / "results.md").read_text()


def test_baseline_methods_run_through_the_same_outputs(data_root, tmp_path):
    assert protect(data_root, tmp_path / "blur", "--method", "blur", "--blur_sigma", "2") == 0
    report = results(tmp_path / "blur")
    assert report["run"]["method"] == "blur" and report["protection"]["test"]["noise_share"] == 0.0
    assert set(report["reid"]) == {"encry2encry", "clean2clean", "encry2clean", "clean2encry"}


def test_a_plain_image_folder_gets_one_protected_png_per_input_and_reports_skipped_files(data_root, tmp_path):
    folder = tmp_path / "gallery" / "cam1"
    folder.mkdir(parents=True)
    source = os.path.join(data_root, "market1501", "query")
    first, second = sorted(os.listdir(source))[:2]
    shutil.copy(os.path.join(source, first), folder / "frame.jpg")
    with Image.open(os.path.join(source, second)) as image:
        image.save(folder / "frame.PNG")
        image.save(folder / "frame.bmp")
        image.save(folder / "frame.webp")
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    argv = [
        "--random_init",
        "--image_folder",
        str(tmp_path / "gallery"),
        "--output",
        str(output),
        "--batch_size",
        "3",
        "--max_iter",
        "2",
        "--device",
        "cpu",
        "--no_progress",
        *TINY,
    ]
    assert protect_image.main(argv) == 0
    assert sorted(os.listdir(output / "protected" / "cam1")) == [
        "frame.PNG.png",
        "frame.bmp.png",
        "frame.jpg.png",
        "frame.webp.png",
    ]
    features = torch.load(output / "features" / "features.pt", weights_only=True)
    assert features["paths"] == ["cam1/frame.PNG", "cam1/frame.bmp", "cam1/frame.jpg", "cam1/frame.webp"]
    assert features["protected"].shape == (4, 2048)
    assert "reid" not in results(output)
    assert "skipped 1 file: cam1/notes.txt (" in (output / "log.txt").read_text()


def test_names_that_would_overwrite_each_other_are_refused_up_front(data_root, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "gallery"
    folder.mkdir()
    source = os.path.join(data_root, "market1501", "query")
    name = sorted(os.listdir(source))[0]
    shutil.copy(os.path.join(source, name), folder / "a.jpg")
    shutil.copy(os.path.join(source, name), folder / "a.JPG")
    # As on a case-insensitive file system (macOS, Windows, exFAT), where a.jpg and a.JPG are one file.
    monkeypatch.setattr("data.splits.folder_is_case_sensitive", lambda folder: False)
    output = tmp_path / "out"
    argv = [
        "--random_init",
        "--image_folder",
        str(folder),
        "--output",
        str(output),
        "--device",
        "cpu",
        "--no_progress",
        *TINY,
    ]
    assert protect_image.main(argv) == 2
    assert "1 protected name(s) would overwrite each other" in error_line(capsys.readouterr())
    assert not os.path.exists(output)


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


def test_a_diverging_batch_stops_the_run_with_a_clear_error_and_keeps_earlier_batches(
    data_root, tmp_path, monkeypatch, capsys
):
    from engine.methods import ProtectedBatch
    from engine.methods.pixelfade import PixelFade

    real_call = PixelFade.__call__

    def diverge_on_second_batch(self, original, indices):
        if int(indices[0]) > 0:
            return ProtectedBatch(original * float("nan"), None)
        return real_call(self, original, indices)

    monkeypatch.setattr(PixelFade, "__call__", diverge_on_second_batch)
    output = tmp_path / "nan"
    assert protect(data_root, output) == 2
    error = capsys.readouterr().err
    assert "non-finite feature loss in test batch 1" in error
    assert os.listdir(output / "records") == ["test-0.pt"]


# Every flag with a distinct value, and the config key each one must set (written out, not derived).
FLAG_CASES = {
    "--reid_ckpt_path": ("TEST.WEIGHT", "w.pth"),
    "--output": ("OUTPUT_DIR", "2024"),
    "--dataset": ("DATASETS.NAMES", "cuhk03"),
    "--root": ("DATASETS.ROOT_DIR", "/data/x"),
    "--batch_size": ("PIXELFADE.BATCH_SIZE", 12),
    "--max_iter": ("PIXELFADE.MAX_ITER", 77),
    "--fade_num_iter": ("PIXELFADE.FADE_NUM_ITER", 3),
    "--warmup_iter": ("PIXELFADE.WARMUP_ITER", 2),
    "--momentum_w": ("PIXELFADE.MOMENTUM", 0.25),
    "--beta": ("PIXELFADE.BETA", 0.011),
    "--beta_temp": ("PIXELFADE.BETA_TEMP", 0.033),
    "--epsilon": ("PIXELFADE.EPSILON", 0.044),
    "--seed": ("PIXELFADE.SEED", 9),
    "--mode": ("PIXELFADE.MODE", "per_image"),
    "--precision": ("PIXELFADE.PRECISION", "bf16"),
    "--channels_last": ("PIXELFADE.CHANNELS_LAST", True),
    "--train_order": ("PIXELFADE.TRAIN_ORDER", "every_image"),
    "--method": ("PIXELFADE.METHOD", "mosaic"),
    "--blur_sigma": ("PIXELFADE.BLUR_SIGMA", 2.5),
    "--mosaic_block": ("PIXELFADE.MOSAIC_BLOCK", 6),
    "--noise_std": ("PIXELFADE.NOISE_STD", 0.3),
    "--device": ("MODEL.DEVICE", "cpu"),
    "--num_workers": ("DATALOADER.NUM_WORKERS", 3),
}


def config_from(argv):
    from engine.protect.run import build_protect_config

    args = protect_image.build_parser().parse_args(argv)
    return build_protect_config(
        args.config_file, list(args.opts), protect_image.flag_values(args), protect_image.FLAG_OF_KEY
    )


def test_every_flag_sets_its_own_config_key_and_wins_over_overrides():
    argv = []
    for flag, (_, value) in FLAG_CASES.items():
        argv += [flag, str(value)]
    argv += ["--save_png", "PIXELFADE.BETA", "0.5", "PIXELFADE.SAVE_IMAGE_NPY", "True"]
    cfg = config_from(argv)
    defaults = load_config()
    for flag, (key, value) in FLAG_CASES.items():
        section, name = key.split(".") if "." in key else (None, key)
        got = cfg[section][name] if section else cfg[name]
        assert got == value and type(got) is type(value), f"{flag} -> {key}: {got!r}"
    assert cfg.PIXELFADE.SAVE_PNG and cfg.PIXELFADE.SAVE_IMAGE_NPY
    # Keys no flag touched keep the defaults.
    assert cfg.PIXELFADE.TAIL_ITERS == defaults.PIXELFADE.TAIL_ITERS == 5
    assert cfg.TEST.FEAT_NORM == "on"


def test_image_folder_sets_the_data_set_and_refuses_pairs(tmp_path, capsys):
    cfg = config_from(["--image_folder", str(tmp_path)])
    assert cfg.DATASETS.NAMES == "image_folder" and cfg.DATASETS.ROOT_DIR == str(tmp_path)
    assert cfg.OUTPUT_DIR == os.path.join("log", "image_folder_protect")
    assert protect_image.main(["--image_folder", str(tmp_path), "--save_image_npy", "--random_init"]) == 2
    assert "--save_image_npy needs a labelled data set" in capsys.readouterr().err


def test_help_shows_the_config_defaults_and_needs_no_torch():
    code = (
        "import sys, protect_image; text = protect_image.build_parser().format_help(); "
        "print('torch' in sys.modules); print(text)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    first, help_text = done.stdout.split("\n", 1)
    assert first == "False"
    flat = " ".join(help_text.split())
    assert "default: None" not in flat
    for text in (
        "[PIXELFADE.BATCH_SIZE, default: 20]",
        "[PIXELFADE.EPSILON, default: 0.03]",
        "[PIXELFADE.BETA_TEMP, default: 0.04]",
        "[PIXELFADE.CHANNELS_LAST, default: False]",
    ):
        assert text in flat, text
