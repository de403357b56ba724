"""Fidelity of the opt-in speed options: what channels_last and bf16/fp16 autocast change.

Reference mode (fp32, standard memory layout, PIXELFADE.PRECISION none, PIXELFADE.CHANNELS_LAST
False) reproduces the authors' code bit for bit. The faster options change the numbers, and the
optimisation loop amplifies any rounding. This script measures by how much: it protects one small
synthetic Market-1501 once per variant through the real pipeline (protect_image.main with an
untrained AGW, --random_init) and compares each variant with the default run:

  * max / mean abs difference of the float32 protected test images (img_npy/encry-test-*-images.npy),
  * Re-ID mAP (encry2clean, encry2encry; clean2clean for reference) from each run's results.json,
  * the mean final feature MSE of the test split and the run's seconds (run.seconds_this_run).

On CUDA (--device cuda) the baseline is strict fp32 (TF32 off in cuBLAS and cuDNN) and two more variants show
what TF32 changes: tf32 (TF32 everywhere) and tf32_convs (TF32 convolutions, fp32 matrix products: torch's default,
which protect_image.py gets on CUDA unless told otherwise). Every other variant runs strict fp32 outside its own
option, so each row shows that option's cost alone. The ``gpu`` preset is the paper's input size.

The default preset is the scale the README's fidelity figures were measured at (16 ids, 3 cams, 2 images
per id and camera, 128x64, BETA = BETA_TEMP = 0.005, EPSILON = 0.1): the untrained model is very
input-sensitive, so small steps are needed. A rerun with the same --work reuses the finished runs (a
run with results.json is not repeated) and resumes an interrupted one.

    python benchmarks/bench_fidelity.py --work /tmp/pixelfade_fidelity
    python benchmarks/bench_fidelity.py --work /tmp/f --num-ids 6 --height 32 --width 16 --max-iter 2
    python benchmarks/bench_fidelity.py --work /tmp/fidelity_gpu --scale gpu --device cuda --in-process --with-fp16
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

import protect_image
from data import img_npy
from data.synthetic import make_market1501
from utils.errors import PixelFadeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# "demo": the scale of the README's fidelity figures (the untrained-model demo of the first release);
# "small": the same at test size.
SCALES = {
    "demo": {
        "num_ids": 16,
        "num_cams": 3,
        "images_per_id_cam": 2,
        "height": 128,
        "width": 64,
        "batch_size": 16,
        "max_iter": 40,
        "beta": 0.005,
        "beta_temp": 0.005,
        "epsilon": 0.1,
    },
    "small": {
        "num_ids": 10,
        "num_cams": 2,
        "images_per_id_cam": 2,
        "height": 64,
        "width": 32,
        "batch_size": 8,
        "max_iter": 30,
        "beta": 0.005,
        "beta_temp": 0.005,
        "epsilon": 0.1,
    },
    # "gpu": the paper's 256x128 input at a size one GPU protects in about a minute for all variants.
    "gpu": {
        "num_ids": 20,
        "num_cams": 3,
        "images_per_id_cam": 3,
        "height": 256,
        "width": 128,
        "batch_size": 20,
        "max_iter": 50,
        "beta": 0.005,
        "beta_temp": 0.005,
        "epsilon": 0.1,
    },
}
BASELINE = "default"
# Variant name -> its protect_image.py flags (the baseline pins the reference settings explicitly).
VARIANTS = {
    "default": ["--precision", "none", "--channels_last", "false"],
    "channels_last": ["--precision", "none", "--channels_last", "true"],
    "bf16": ["--precision", "bf16", "--channels_last", "false"],
    "bf16+channels_last": ["--precision", "bf16", "--channels_last", "true"],
}
FP16_VARIANTS = {"fp16": ["--precision", "fp16", "--channels_last", "false"]}
# CUDA only: the same flags as the default, other math (CUDA_MATH).
CUDA_VARIANTS = {
    "tf32": ["--precision", "none", "--channels_last", "false"],
    "tf32_convs": ["--precision", "none", "--channels_last", "false"],
}
# TF32 in cuBLAS (matrix products) and cuDNN (convolutions) per variant on CUDA; every other variant is strict.
STRICT_MATH = {"matmul_tf32": False, "conv_tf32": False}
CUDA_MATH = {"tf32": {"matmul_tf32": True, "conv_tf32": True}, "tf32_convs": {"matmul_tf32": False, "conv_tf32": True}}
# A fresh process with the variant's CUDA math set before protect_image.main runs (argv: math JSON, then flags).
LAUNCHER = (
    "import json, sys, torch; math = json.loads(sys.argv[1]); "
    "torch.backends.cuda.matmul.allow_tf32 = math['matmul_tf32']; torch.backends.cudnn.allow_tf32 = math['conv_tf32']; "
    "import protect_image; sys.exit(protect_image.main(sys.argv[2:]))"
)
SETTINGS_NAME = "bench_settings.json"
TABLE_NAME = "fidelity.md"
JSON_NAME = "fidelity.json"
RUN_NOTE_NAME = "bench_run.json"


def build_parser():
    parser = argparse.ArgumentParser(
        description="Measure what --channels_last and --precision bf16/fp16 change against the default (fp32) "
        "protection: image difference, Re-ID mAP, feature MSE, time."
    )
    parser.add_argument(
        "--work",
        default=os.path.join("log", "bench_fidelity"),
        help="work folder: data/, one run folder per variant, fidelity.md and fidelity.json "
        "(reused by a rerun) [default: %(default)s]",
    )
    parser.add_argument(
        "--scale",
        choices=list(SCALES),
        default="demo",
        help="preset: demo (the README's fidelity figures) or small (test size); the options "
        "below override single values [default: %(default)s]",
    )
    group = parser.add_argument_group("synthetic data (data.synthetic.make_market1501; default: the preset's)")
    for flag, help_text in (("--num-ids", "identities (half train, half test)"), ("--num-cams", "cameras"),
                            ("--images-per-id-cam", "images per identity and camera"),
                            ("--height", "image height (also INPUT.IMG_SIZE)"),
                            ("--width", "image width (also INPUT.IMG_SIZE)")):
        group.add_argument(flag, type=int, help=help_text)
    group.add_argument("--data-seed", type=int, default=0, help="generator seed [default: %(default)s]")
    group = parser.add_argument_group("protection (default: the preset's)")
    for flag, kind, key in (("--batch-size", int, "BATCH_SIZE"), ("--max-iter", int, "MAX_ITER"),
                            ("--beta", float, "BETA"), ("--beta-temp", float, "BETA_TEMP"),
                            ("--epsilon", float, "EPSILON")):
        group.add_argument(flag, type=kind, help=f"PIXELFADE.{key}")
    group = parser.add_argument_group("variants and machine")
    group.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS) + list(FP16_VARIANTS) + list(CUDA_VARIANTS),
        help=f"subset to run ({BASELINE!r} is always run, first) [default: {' '.join(VARIANTS)}, on CUDA also "
        f"{' '.join(CUDA_VARIANTS)}]",
    )
    group.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N; on CUDA the baseline is strict fp32 and the TF32 variants are added "
        "[default: %(default)s]",
    )
    group.add_argument("--with-fp16", action="store_true", help="also run --precision fp16")
    group.add_argument("--threads", type=int, help="torch threads of each run (default: torch's choice)")
    group.add_argument(
        "--in-process",
        action="store_true",
        help="call protect_image.main in this process instead of one fresh process per variant "
        "(faster to start; a later variant then runs on warm caches, so its seconds are lower)",
    )
    return parser


def resolve_scale(args):
    """Fill every unset size/protection option from the --scale preset."""
    for key, value in SCALES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def selected_variants(args):
    names = list(args.variants) if args.variants else list(VARIANTS)
    if not args.variants and args.device != "cpu":
        names += list(CUDA_VARIANTS)
    if args.with_fp16:
        names += [n for n in FP16_VARIANTS if n not in names]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    names.sort(key=lambda n: 0 if n == BASELINE else 1)  # the baseline first, others in the order given
    return names


def variant_flags(variant):
    return VARIANTS.get(variant) or FP16_VARIANTS.get(variant) or CUDA_VARIANTS[variant]


def cuda_math(variant):
    return CUDA_MATH.get(variant, STRICT_MATH)


def run_settings(args):
    """Everything that decides a run's numbers; a --work may only be reused with the same."""
    device = {} if args.device == "cpu" else {"device": args.device}
    return {
        **device,
        "data": {
            "num_ids": args.num_ids,
            "num_cams": args.num_cams,
            "images_per_id_cam": args.images_per_id_cam,
            "height": args.height,
            "width": args.width,
            "seed": args.data_seed,
        },
        "protection": {
            "batch_size": args.batch_size,
            "max_iter": args.max_iter,
            "beta": args.beta,
            "beta_temp": args.beta_temp,
            "epsilon": args.epsilon,
        },
    }


def check_work(work, settings):
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, SETTINGS_NAME)
    if os.path.exists(path):
        with open(path) as handle:
            previous = json.load(handle)
        if previous != settings:
            raise SystemExit(
                f"bench_fidelity.py: error: {work} holds runs with other settings "
                f"({previous} there, {settings} now); use another --work or delete it"
            )
    else:
        with open(path, "w") as handle:
            json.dump(settings, handle, indent=2)


def ensure_data(work, data):
    """Generate the data set once, beside its place, then move it there (an interrupted one is redone)."""
    root = os.path.join(work, "data")
    if not os.path.isdir(root):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        make_market1501(
            partial,
            num_ids=data["num_ids"],
            num_cams=data["num_cams"],
            images_per_id_cam=data["images_per_id_cam"],
            height=data["height"],
            width=data["width"],
            seed=data["seed"],
        )
        os.replace(partial, root)
    return root


def protect_argv(args, root, output, variant):
    return [
        "--random_init",
        "--root",
        root,
        "--output",
        output,
        "--device",
        args.device,
        "--no_progress",
        "--save_image_npy",
        "--dataset",
        "market1501",
        "--batch_size",
        str(args.batch_size),
        "--max_iter",
        str(args.max_iter),
        "--beta",
        str(args.beta),
        "--beta_temp",
        str(args.beta_temp),
        "--epsilon",
        str(args.epsilon),
        *variant_flags(variant),
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.IMG_SIZE",
        f"[{args.height}, {args.width}]",
        "PIXELFADE.NUM_GRIDS",
        "1",
    ]


def run_variant(args, root, work, variant):
    """Protect with ``variant`` unless a finished run is there; returns (results.json, how it was obtained)."""
    output = os.path.join(work, variant)
    results_path = os.path.join(output, "results.json")
    if os.path.exists(results_path):
        how = "reused"
    else:
        how = "resumed" if os.path.isdir(output) and os.listdir(output) else "fresh"
        print(f"[bench_fidelity] protecting with {variant} ({how}) -> {output}", flush=True)
        started = time.perf_counter()
        argv = protect_argv(args, root, output, variant)
        on_cuda = args.device != "cpu"
        if args.in_process:
            saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            if on_cuda:
                math = cuda_math(variant)
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (
                    math["matmul_tf32"], math["conv_tf32"])
            try:
                code = protect_image.main(argv)
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        else:
            env = dict(os.environ)
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            # The launcher on every device, so a CPU dry run takes the same path (the flags mean nothing there).
            command = ["-c", LAUNCHER, json.dumps(cuda_math(variant))]
            code = subprocess.run([sys.executable, *command, *argv], cwd=ROOT, env=env, check=False).returncode
        if code:
            raise SystemExit(f"bench_fidelity.py: error: protect_image.py failed for {variant} (exit {code})")
        wall = time.perf_counter() - started
        print(f"[bench_fidelity] {variant}: {wall:.1f} s", flush=True)
        # The machine's load when the run ended: timings on a shared machine mean little without it.
        with open(os.path.join(output, RUN_NOTE_NAME), "w") as handle:
            json.dump(
                {
                    "wall_seconds": round(wall, 2),
                    "how": how,
                    "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]
                    if hasattr(os, "getloadavg")
                    else None,
                },
                handle,
                indent=2,
            )
    with open(results_path) as handle:
        return json.load(handle), how


def read_run_note(output):
    path = os.path.join(output, RUN_NOTE_NAME)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def protected_test_images(output):
    """{batch index: path} of the float32 protected test images."""
    try:
        return {pair.index: pair.protected for pair in img_npy.find_pairs(img_npy.npy_dir_of(output), "test")}
    except PixelFadeError as err:
        raise SystemExit(f"bench_fidelity.py: error: {err}") from None


def image_difference(baseline_dir, variant_dir):
    """Max and mean abs difference over all elements of the protected test images."""
    base, other = protected_test_images(baseline_dir), protected_test_images(variant_dir)
    if sorted(base) != sorted(other):
        raise SystemExit(f"bench_fidelity.py: error: {variant_dir} and {baseline_dir} hold different test batches")
    max_diff, total, count = 0.0, 0.0, 0
    for index in sorted(base):
        a, b = np.load(base[index]), np.load(other[index])
        if a.shape != b.shape:
            raise SystemExit(f"bench_fidelity.py: error: batch {index} shapes differ: {a.shape} vs {b.shape}")
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        max_diff = max(max_diff, float(diff.max()) if diff.size else 0.0)
        total += float(diff.sum())
        count += diff.size
    return max_diff, total / max(count, 1), count


def source_revision():
    """The git commit of the code measured, '+changes' when the tree differs from it; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def machine(device="cpu"):
    on_cuda = device != "cpu" and torch.cuda.is_available()
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if on_cuda else None,
        "cuda": torch.version.cuda if on_cuda else None,
        "source": source_revision(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def markdown_table(rows):
    lines = [
        "| variant | max abs diff vs fp32 | mean abs diff | encry2clean mAP | encry2encry mAP "
        "| feature MSE | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = f"{row['seconds']:.1f}" + ("" if row["how"] in ("fresh", "reused") else f" ({row['how']})")
        lines.append(
            f"| {row['variant']} | {row['max_abs_diff']:.3g} | {row['mean_abs_diff']:.3g} "
            f"| {row['encry2clean_mAP']:.4f} | {row['encry2encry_mAP']:.4f} "
            f"| {row['feature_mse']:.4f} | {seconds} |"
        )
    return "\n".join(lines)


def report(rows, settings, info, command):
    clean = rows[0]["clean2clean_mAP"]
    data, prot = settings["data"], settings["protection"]
    return "\n".join(
        [
            "# PixelFade fidelity of the speed options",
            "",
            f"Command: `{command}`",
            "",
            f"Code: {info['source']}. Machine: {info['cpu_count']} CPUs ({info['affinity_cpus']} usable), "
            f"torch {info['torch']}, "
            f"{info['torch_threads']} torch threads, Python {info['python']}, {info['platform']}; "
            f"load average now {info['load_average_1_5_15min']} "
            "(1/5/15 min; each run's own is in fidelity.json, run_note).",
            "",
            f"Data: synthetic Market-1501, {data['num_ids']} ids, {data['num_cams']} cams, "
            f"{data['images_per_id_cam']} images per id and camera, {data['height']}x{data['width']}; "
            f"untrained AGW (--random_init), BATCH_SIZE {prot['batch_size']}, MAX_ITER {prot['max_iter']}, "
            f"BETA {prot['beta']}, BETA_TEMP {prot['beta_temp']}, EPSILON {prot['epsilon']}, "
            f"device {info['device']}" + (f" ({info['gpu']}, CUDA {info['cuda']})" if info["gpu"] else "") + ".",
            "",
            markdown_table(rows),
            "",
            f"Differences are over all {rows[0]['elements']} elements of the float32 protected test images "
            f"(normalised space) against the default run; clean2clean mAP (unprotected) = {clean:.4f}. "
            "Feature MSE: mean final feature MSE of the test split. Seconds: run.seconds_this_run of the "
            "variant's pipeline run (a resumed run counts only its own part).",
            "",
        ]
    )


def main(argv=None):
    args = resolve_scale(build_parser().parse_args(argv))
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise SystemExit(f"bench_fidelity.py: error: --device {args.device}: expected cpu, or cuda[:N] on a machine "
                         "with CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = os.path.abspath(args.work)
    settings = run_settings(args)
    check_work(work, settings)
    root = ensure_data(work, settings["data"])
    names = selected_variants(args)
    results = {name: run_variant(args, root, work, name) for name in names}
    rows = []
    for name in names:
        result, how = results[name]
        max_diff, mean_diff, count = image_difference(os.path.join(work, BASELINE), os.path.join(work, name))
        reid = result["reid"]
        rows.append(
            {
                "variant": name,
                "flags": " ".join(variant_flags(name)),
                "cuda_math": cuda_math(name) if args.device != "cpu" else None,
                "max_abs_diff": max_diff,
                "mean_abs_diff": mean_diff,
                "elements": count,
                "encry2clean_mAP": float(reid["encry2clean"]["mAP"]),
                "encry2encry_mAP": float(reid["encry2encry"]["mAP"]),
                "clean2clean_mAP": float(reid["clean2clean"]["mAP"]),
                "feature_mse": float(result["protection"]["test"]["feature_mse"]),
                "seconds": float(result["run"]["seconds_this_run"]),
                "how": how,
                "run_note": read_run_note(os.path.join(work, name)),
            }
        )
    info = machine(args.device)
    command = "python benchmarks/bench_fidelity.py" + (
        "" if argv is None and len(sys.argv) < 2 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    text = report(rows, settings, info, command)
    with open(os.path.join(work, TABLE_NAME), "w") as handle:
        handle.write(text)
    with open(os.path.join(work, JSON_NAME), "w") as handle:
        json.dump({"machine": info, "settings": settings, "baseline": BASELINE, "rows": rows}, handle, indent=2)
    print(text)
    print(f"written: {os.path.join(work, TABLE_NAME)}, {os.path.join(work, JSON_NAME)}")
    return rows


if __name__ == "__main__":
    main()
