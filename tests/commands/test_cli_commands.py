"""The commands' shared command-line behaviour: threads, one-line refusals, Ctrl-C, YAML errors."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import REPO, protect_argv

import demo
import protect_image
import recovery_attack
import train_reid
from configs import load_config
from data.synthetic import make_market1501
from engine.attack import run as attack
from engine.protect import run as protect_run
from engine.train import reid as reid_trainer
from utils import cpus

COMMANDS = {"protect_image.py": protect_image, "train_reid.py": train_reid, "recovery_attack.py": recovery_attack}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_market1501(str(root), num_ids=4, num_cams=2, images_per_id_cam=2, height=32, width=16, seed=5)
    return str(root)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _argv(prog, tmp_path, *extra):
    """A valid start of each command's arguments; ``extra`` come last."""
    if prog == "recovery_attack.py":
        return ["--npy_path", str(tmp_path), "--device", "cpu", "--no_progress", *extra]
    return ["--root", str(tmp_path), "--output", str(tmp_path / "out"), "--device", "cpu", "--no_progress", *extra]


def _one_error_line(capsys, prog):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0][len(f"{prog}: error: "):]


@pytest.mark.parametrize("prog", ["protect_image.py", "train_reid.py"])
def test_nproc_per_node_below_one_is_refused_in_one_line(tmp_path, capsys, prog):
    assert COMMANDS[prog].main(_argv(prog, tmp_path, "--nproc_per_node", "0")) == 2
    assert _one_error_line(capsys, prog) == "--nproc_per_node must be >= 1, got 0"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_a_flag_after_the_key_value_pairs_is_named_as_a_misplaced_flag(tmp_path, capsys, prog):
    argv = _argv(prog, tmp_path, "SYSTEM.THREADS", "1", "--threads", "2")
    assert COMMANDS[prog].main(argv) == 2
    assert _one_error_line(capsys, prog) == ("--threads comes after the KEY VALUE overrides, where it would be read "
                                             "as a config key; expected every flag before them")


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_a_yaml_syntax_error_is_one_line_and_exit_2(tmp_path, capsys, prog):
    config = tmp_path / "broken.yml"
    config.write_text("PIXELFADE:\n  BETA: 0.1\n   MAX_ITER: 3\n")
    assert COMMANDS[prog].main(["--config_file", str(config), *_argv(prog, tmp_path)]) == 2
    message = _one_error_line(capsys, prog)
    assert message.startswith(f"config file {config}: YAML syntax error at line 3, column 12: ")


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_bad_threads_and_bad_override_types_are_one_line(tmp_path, capsys, prog):
    assert COMMANDS[prog].main(_argv(prog, tmp_path, "ATTACK.TOTAL_EPOCHS", "abc")) == 2
    assert _one_error_line(capsys, prog) == "config override ATTACK.TOTAL_EPOCHS: expected an integer, got 'abc'"
    assert COMMANDS[prog].main(_argv(prog, tmp_path, "--threads", "-1")) == 2
    assert "SYSTEM.THREADS" in _one_error_line(capsys, prog)


def test_an_integer_for_a_float_key_reaches_the_run(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(protect_run, "run", lambda cfg, *args: seen.setdefault("protect", cfg))
    monkeypatch.setattr("engine.attack.run.run_recovery_attack", lambda cfg, *args, **kw: seen.setdefault("attack", cfg))
    monkeypatch.setattr("data.img_npy.resolve_npy_dir", lambda path: path)
    assert protect_image.main(_argv("protect_image.py", tmp_path, "--random_init", "PIXELFADE.BETA", "1")) == 0
    assert recovery_attack.main(_argv("recovery_attack.py", tmp_path, "ATTACK.VAL_FRACTION", "0")) == 0
    assert seen["protect"].PIXELFADE.BETA == 1.0 and type(seen["protect"].PIXELFADE.BETA) is float
    assert seen["attack"].ATTACK.VAL_FRACTION == 0.0 and type(seen["attack"].ATTACK.VAL_FRACTION) is float


@pytest.mark.parametrize("prog, target", [
    ("protect_image.py", (protect_run, "run")),
    ("train_reid.py", (reid_trainer, "run")),
    ("recovery_attack.py", (attack, "run_recovery_attack")),
])
def test_ctrl_c_is_one_line_naming_the_kept_folder_and_exit_130(tmp_path, capsys, monkeypatch, prog, target):
    def interrupted(*args, **kwargs):
        os.makedirs(tmp_path / "out", exist_ok=True)
        raise KeyboardInterrupt

    module, name = target
    if prog == "recovery_attack.py":
        monkeypatch.setattr("data.img_npy.resolve_npy_dir", lambda path: path)
        argv = _argv(prog, tmp_path, "--output", str(tmp_path / "out"))
    else:
        argv = _argv(prog, tmp_path, "--random_init") if prog == "protect_image.py" else _argv(prog, tmp_path)
    monkeypatch.setattr(module, name, interrupted)
    assert COMMANDS[prog].main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    expected = f"{prog}: interrupted: finished work is kept in {tmp_path / 'out'}; rerun the same command to resume"
    assert lines == [expected]


@pytest.mark.parametrize("prog, target", [
    ("protect_image.py", (protect_run, "run")),
    ("train_reid.py", (reid_trainer, "run")),
    ("recovery_attack.py", (attack, "run_recovery_attack")),
])
def test_the_thread_count_is_set_before_the_work_starts(tmp_path, monkeypatch, restore_threads, prog, target):
    seen = []
    monkeypatch.setattr(*target, lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    monkeypatch.setattr("data.img_npy.resolve_npy_dir", lambda path: path)
    extra = ("--random_init",) if prog == "protect_image.py" else ()
    torch.set_num_threads(1)
    assert COMMANDS[prog].main(_argv(prog, tmp_path, *extra, "--threads", "2")) == 0
    assert COMMANDS[prog].main(_argv(prog, tmp_path, *extra, "SYSTEM.THREADS", "3")) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert COMMANDS[prog].main(_argv(prog, tmp_path, *extra)) == 0
    assert seen == [2, 3, 1]


@pytest.mark.slow
def test_another_thread_count_changes_images_only_by_rounding_and_still_resumes(data_root, tmp_path, restore_threads):
    """Reference mode at 1 and 2 threads: not bit-identical (the kernels' sums run in another order), but
    the same up to float rounding, and a run resumes whatever its thread count."""
    outputs = {threads: tmp_path / f"threads{threads}" for threads in (1, 2)}

    def argv(output, threads):
        return protect_argv(data_root, output, "--save_image_npy", "--threads", str(threads),
                            "--train_order", "every_image", "PIXELFADE.NUM_GRIDS", "0")

    for threads, output in outputs.items():
        assert protect_image.main(argv(output, threads)) == 0
    names = sorted(os.path.basename(p) for p in glob.glob(str(outputs[1] / "img_npy" / "encry-*-images.npy")))
    assert len(names) >= 4
    for name in names:
        first, second = (np.load(outputs[t] / "img_npy" / name) for t in (1, 2))
        assert np.abs(first - second).max() < 1e-4, name
    assert protect_image.main(argv(outputs[1], 2)) == 0
    assert "resumed run" in (outputs[1] / "log.txt").read_text()


def test_the_thread_count_enters_no_run_fingerprint(tmp_path):
    one, two = (load_config("", ["SYSTEM.THREADS", str(n), "OUTPUT_DIR", str(tmp_path)]) for n in (1, 2))
    assert protect_run.run_fingerprint(one, "digest") == protect_run.run_fingerprint(two, "digest")

    class _Data:
        train, num_train_pids = [0] * 8, 4

    assert reid_trainer.run_identity(one, _Data(), 1) == reid_trainer.run_identity(two, _Data(), 1)
    assert not any(key.startswith("SYSTEM") for key in reid_trainer.run_identity(one, _Data(), 1))


@pytest.mark.slow
def test_sigint_mid_run_ends_with_one_line_and_keeps_finished_batches(data_root, tmp_path):
    output = tmp_path / "interrupted"
    argv = protect_argv(data_root, output, "--batch_size", "2", "--max_iter", "20", "--threads", "1")
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "protect_image.py"), *argv], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not glob.glob(str(output / "records" / "*.pt")) and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"protect_image.py: interrupted: finished work is kept in {output}; "
                                            "rerun the same command to resume")
    assert glob.glob(str(output / "records" / "*.pt")) and not (output / "results.json").exists()


def test_protection_loader_workers_are_capped_and_ctrl_c_there_keeps_the_folder(data_root, tmp_path, monkeypatch,
                                                                                capsys):
    """4 workers asked on a process allowed 1 CPU: the loader gets 1; Ctrl-C as it starts ends in one line."""
    asked = []

    def loader(*args, num_workers=0, **kwargs):
        asked.append(num_workers)
        raise KeyboardInterrupt

    monkeypatch.setattr(cpus, "available_cpus", lambda: 1)
    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    output = tmp_path / "capped"
    argv = protect_argv(data_root, output)[:-2] + ["DATALOADER.NUM_WORKERS", "4"]
    assert protect_image.main(argv) == 130
    assert asked == [1]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"protect_image.py: interrupted: finished work is kept in {output}; rerun the same command to resume")


def test_demo_sets_the_thread_count_and_refuses_a_bad_one(monkeypatch, capsys, restore_threads):
    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: seen.append(torch.get_num_threads()) or {"report": ""})
    torch.set_num_threads(1)
    assert demo.main(["--threads", "2", "--output", "unused"]) == 0 and seen == [2]
    capsys.readouterr()
    assert demo.main(["--threads", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "demo.py: error: --threads must be an integer >= 0 (0: the CPUs this process may use), got -1")
