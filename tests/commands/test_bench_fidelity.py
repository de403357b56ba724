"""benchmarks/bench_fidelity.py without running the pipeline (a real run takes minutes on a CPU)."""

import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import REPO

from data import img_npy

ROOT = REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_fidelity", os.path.join(ROOT, "benchmarks", "bench_fidelity.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help(bench, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["--help"])
    assert info.value.code == 0
    assert "--channels_last" in capsys.readouterr().out


def test_protect_argv_uses_the_cli_flags(bench):
    import protect_image

    args = bench.resolve_scale(bench.build_parser().parse_args(["--max-iter", "3"]))
    assert args.max_iter == 3 and args.height == bench.SCALES["demo"]["height"]
    for variant in list(bench.VARIANTS) + list(bench.FP16_VARIANTS):
        argv = bench.protect_argv(args, "/data", "/out", variant)
        parsed = protect_image.build_parser().parse_args(argv)
        assert parsed.random_init and parsed.save_image_npy and parsed.no_progress
        assert parsed.max_iter == 3 and parsed.device == "cpu"
        assert parsed.precision == ("none" if "16" not in variant else variant.split("+")[0])
        assert parsed.channels_last is ("channels_last" in variant)


def test_variant_selection(bench):
    parse = bench.build_parser().parse_args
    assert bench.selected_variants(parse([])) == list(bench.VARIANTS)
    assert bench.selected_variants(parse(["--variants", "bf16"])) == ["default", "bf16"]
    assert bench.selected_variants(parse(["--variants", "bf16", "--with-fp16"])) == ["default", "bf16", "fp16"]


def test_image_difference_and_table(bench, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros(3, dtype=np.int64)
    for index in range(2):
        images = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)
        other = images.copy()
        other[0, 0, 0, 0] += 0.5
        for name, protected in (("default", images), ("bf16", other)):
            img_npy.write_batch(
                img_npy.npy_dir_of(str(tmp_path / name)), "test", index, images, protected, labels, labels
            )
    same = bench.image_difference(str(tmp_path / "default"), str(tmp_path / "default"))
    assert same == (0.0, 0.0, 2 * 72)
    max_diff, mean_diff, count = bench.image_difference(str(tmp_path / "default"), str(tmp_path / "bf16"))
    assert max_diff == pytest.approx(0.5, abs=1e-6) and mean_diff == pytest.approx(1.0 / 144, abs=1e-7)
    row = {
        "variant": "default",
        "max_abs_diff": 0.0,
        "mean_abs_diff": 0.0,
        "encry2clean_mAP": 0.5,
        "encry2encry_mAP": 0.6,
        "feature_mse": 0.05,
        "seconds": 12.0,
        "how": "fresh",
    }
    table = bench.markdown_table([row])
    assert table.splitlines()[2] == "| default | 0 | 0 | 0.5000 | 0.6000 | 0.0500 | 12.0 |"


def test_work_folder_refuses_other_settings(bench, tmp_path):
    args = bench.resolve_scale(bench.build_parser().parse_args([]))
    bench.check_work(str(tmp_path), bench.run_settings(args))
    bench.check_work(str(tmp_path), bench.run_settings(args))  # same settings: reused
    with open(tmp_path / bench.SETTINGS_NAME) as handle:
        assert json.load(handle)["protection"]["max_iter"] == args.max_iter
    args.max_iter += 1
    with pytest.raises(SystemExit):
        bench.check_work(str(tmp_path), bench.run_settings(args))
