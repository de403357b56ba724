"""The protection engine's own cost per image, outside the model, and how it grows with the number of batches.

Runs protect_image.py on synthetic Market-1501 sets of several sizes (Market's 32,217 protected images at the
largest: train + query + gallery) with a model whose cost is negligible (one 3x3 convolution to 8 channels and an
average pool: an 8-d feature) and one PixelFade step, so what is left is the engine: image check and planning,
loading and decoding (in the main process: --num_workers 0, so it is counted), the statistics, the img_npy pairs,
grids and the batch records, the resume bookkeeping, Re-ID scoring and the results. Per size it reports:
  * wall time of the whole command (a fresh process: imports and start-up included);
  * run.seconds_this_run of results.json (from the opened output folder to the written results) and the model's
    share (results.json cost: the method and its feature extraction, timed inside the step);
  * the engine's time per image = (seconds_this_run - model time) / images;
  * a rerun of the same command on the finished folder (every batch found done: resume bookkeeping + scoring).
With --profile, one more run of the smallest size under cProfile splits the engine's time by component.
ms per image that stays flat across sizes means the cost grows linearly with the number of batches.

    OMP_NUM_THREADS=1 python benchmarks/bench_engine_overhead.py --work /tmp/engine_overhead --sizes 2000 8000 32217
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.synthetic import make_market1501  # after the repository root is importable

CAMERAS, IMAGES_PER_ID_CAM = 6, 6  # Market has 6 cameras; 1 query in 6 test images, as Market's 3,368 / 19,281
# Profile components: (label, file name ending, function names); cumulative time of each, outer calls only.
COMPONENTS = (
    ("image check and planning", "splits.py", ("plan_splits",)),
    ("loading and decoding (DataLoader)", "dataloader.py", ("_next_data",)),
    ("protection step (method, features, statistics)", "protect/engine.py", ("protect_step",)),
    ("  of which the method (the model's passes)", "methods/pixelfade.py", ("__call__",)),
    ("  of which protection statistics", "protection_stats.py", ("protection_statistics",)),
    ("handlers: statistics", "protect/handlers.py", ("StatisticsHandler",)),
    ("handlers: non-finite check", "protect/handlers.py", ("NonFiniteCheck",)),
    ("handlers: img_npy pairs", "protect/handlers.py", ("PairWriter",)),
    ("handlers: grids", "protect/handlers.py", ("GridWriter",)),
    ("handlers: batch record", "protect/handlers.py", ("BatchRecordWriter",)),
    ("handlers: random stream restore", "protect/handlers.py", ("RandomStreamRestorer",)),
    ("resume: pending batches", "protect/run.py", ("pending_batches",)),
    ("results: gather and score", "protect/run.py", ("collect_results",)),
    ("results: write", "protect/results.py", ("write_results",)),
)


class TinyModel(nn.Module):
    """One 3x3 convolution (3 -> 8 channels) and a global average pool: an 8-d feature at almost no cost."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the same weights every time, the caller's stream untouched
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, images):
        return self.conv(images).mean(dim=(2, 3))


def tiny_model():
    """MODEL.FACTORY of the measured runs (bench_engine_overhead:tiny_model)."""
    return TinyModel().eval()


def data_set(work, size, height, width):
    """A synthetic Market-1501 of about ``size`` images (6 cameras x 6 per identity and camera), made once."""
    num_ids = max(2, round(size / (CAMERAS * IMAGES_PER_ID_CAM)))
    root = os.path.join(work, f"data_{num_ids}ids_{height}x{width}")
    seconds = 0.0
    if not os.path.isdir(root):
        started = time.perf_counter()
        shutil.rmtree(root + ".partial", ignore_errors=True)
        make_market1501(root + ".partial", num_ids=num_ids, num_cams=CAMERAS, images_per_id_cam=IMAGES_PER_ID_CAM,
                        height=height, width=width, num_distractors=0, num_junk=0)
        os.replace(root + ".partial", root)
        seconds = time.perf_counter() - started
    return root, seconds


def protect_argv(root, output, batch_size, height, width):
    return ["--random_init", "--root", root, "--output", output, "--device", "cpu", "--no_progress",
            "--batch_size", str(batch_size), "--max_iter", "1", "--warmup_iter", "0", "--save_image_npy",
            "--train_order", "every_image", "--num_workers", "0",
            "MODEL.FORMAT", "module", "MODEL.FACTORY", "bench_engine_overhead:tiny_model",
            "INPUT.IMG_SIZE", f"[{height}, {width}]", "PIXELFADE.NUM_GRIDS", "1"]


def run_command(argv):
    """Wall seconds and peak RSS (MiB) of protect_image.py in a fresh process; stderr shown on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), ROOT,
                                                         os.environ.get("PYTHONPATH", "")])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "protect_image.py"), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"bench_engine_overhead.py: error: protect_image.py failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(after, before) / 1024


def read_results(output):
    with open(os.path.join(output, "results.json")) as handle:
        results = json.load(handle)
    cost = results.get("cost") or {}
    model = (cost.get("ms_per_image") or 0.0) * (cost.get("images_timed") or 0) / 1000.0
    return results["run"]["seconds_this_run"], model, cost.get("images_timed") or 0


def split_counts(root):
    folder = os.path.join(root, "market1501")
    return {name: len(os.listdir(os.path.join(folder, name)))
            for name in ("bounding_box_train", "query", "bounding_box_test")}


def measure_size(args, size):
    root, generated = data_set(args.work, size, args.height, args.width)
    counts = split_counts(root)
    images = sum(counts.values())
    output = os.path.join(args.work, f"run_{images}")
    shutil.rmtree(output, ignore_errors=True)
    argv = protect_argv(root, output, args.batch_size, args.height, args.width)
    wall, rss = run_command(argv)
    seconds, model_seconds, timed = read_results(output)
    rerun_wall, _ = run_command(argv)
    rerun_seconds, _, _ = read_results(output)
    batches = sum(-(-count // args.batch_size) for count in counts.values())
    row = {
        "images": images, "splits": counts, "batches": batches, "data_generation_s": round(generated, 1),
        "wall_s": round(wall, 2), "seconds_this_run": seconds, "model_s": round(model_seconds, 2),
        "engine_ms_per_image": round(1000 * (seconds - model_seconds) / images, 3),
        "wall_ms_per_image": round(1000 * wall / images, 3),
        "rerun_wall_s": round(rerun_wall, 2), "rerun_seconds_this_run": rerun_seconds,
        "rerun_ms_per_batch": round(1000 * rerun_seconds / batches, 3), "peak_rss_mib": round(rss),
        "images_timed": timed,
    }
    print(f"[engine_overhead] {images} images, {batches} batches: wall {wall:.1f} s, run {seconds:.1f} s, "
          f"model {model_seconds:.1f} s, engine {row['engine_ms_per_image']:.2f} ms/image; "
          f"rerun {rerun_wall:.1f} s", flush=True)
    return row


def _line_classes(path):
    """{first line of each class's methods: class name} of a source file, to name its __call__ entries."""
    import ast

    with open(path) as handle:
        tree = ast.parse(handle.read())
    return {item.lineno: node.name for node in tree.body if isinstance(node, ast.ClassDef)
            for item in node.body if isinstance(item, ast.FunctionDef)}


def profile_components(args, size):
    """Cumulative seconds per component of one run under cProfile (in this process)."""
    import protect_image

    root, _ = data_set(args.work, size, args.height, args.width)
    output = os.path.join(args.work, "run_profiled")
    shutil.rmtree(output, ignore_errors=True)
    profiler = cProfile.Profile()
    profiler.enable()
    code = protect_image.main(protect_argv(root, output, args.batch_size, args.height, args.width))
    profiler.disable()
    if code:
        raise SystemExit(f"bench_engine_overhead.py: error: the profiled run failed ({code})")
    stats = pstats.Stats(profiler, stream=io.StringIO())
    classes = {}
    totals = {label: 0.0 for label, _, _ in COMPONENTS}
    for (path, line, function), (_, _, _, cumulative, _) in stats.stats.items():
        for label, ending, names in COMPONENTS:
            if not path.endswith(ending):
                continue
            if path.endswith("protect/handlers.py"):
                if path not in classes:
                    classes[path] = _line_classes(path)
                # Handlers are named by their class: its __call__ or the handle() that a shared __call__ runs.
                name = classes[path].get(line) if function in ("__call__", "handle") else None
            else:
                name = function
            if name in names:
                totals[label] += cumulative
    total = sum(v for (_, _, _, v, _) in [stats.stats[k] for k in stats.stats if k[2] == "main"
                                           and k[0].endswith("protect_image.py")]) or None
    images = sum(split_counts(root).values())
    return {"images": images, "total_s": total, "components_s": {k: round(v, 3) for k, v in totals.items()}}


def markdown(rows, profile, args):
    lines = [
        f"Engine cost outside the model: protect_image.py, tiny model (one 3x3 conv), MAX_ITER 1, batch "
        f"{args.batch_size}, {args.height}x{args.width} JPEGs, --save_image_npy --train_order every_image, "
        f"--num_workers 0, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}.",
        "",
        "| images (train / query / gallery) | batches | wall s | run s | model s | engine ms/image | wall ms/image "
        "| rerun (all done) s | rerun ms/batch | peak RSS MiB |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        s = r["splits"]
        lines.append(
            f"| {r['images']} ({s['bounding_box_train']} / {s['query']} / {s['bounding_box_test']}) | {r['batches']} "
            f"| {r['wall_s']:.1f} | {r['seconds_this_run']:.1f} | {r['model_s']:.1f} | {r['engine_ms_per_image']:.2f} "
            f"| {r['wall_ms_per_image']:.2f} | {r['rerun_wall_s']:.1f} | {r['rerun_ms_per_batch']:.1f} "
            f"| {r['peak_rss_mib']} |")
    if profile:
        lines += ["", f"cProfile of one run at {profile['images']} images (cumulative seconds; profiling slows "
                  "Python-heavy parts):", "", "| component | s | ms/image |", "|---|---|---|"]
        for label, seconds in profile["components_s"].items():
            lines.append(f"| {label} | {seconds:.2f} | {1000 * seconds / profile['images']:.3f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join("log", "engine_overhead"),
                        help="data sets (kept for reruns), run folders, engine_overhead.md/.json [%(default)s]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32217],
                        help="approximate numbers of images [%(default)s]")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="also profile one run of the smallest size")
    args = parser.parse_args(argv)
    if min(args.sizes) < 72 or args.batch_size < 1:
        parser.error("--sizes must be >= 72 (two identities) and --batch-size >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    rows = [measure_size(args, size) for size in sorted(args.sizes)]
    profile = profile_components(args, min(args.sizes)) if args.profile else None
    load = [round(x, 2) for x in os.getloadavg()]
    text = markdown(rows, profile, args) + f"\nLoad average (1/5/15 min) at the end: {load}.\n"
    with open(os.path.join(args.work, "engine_overhead.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.work, "engine_overhead.json"), "w") as handle:
        json.dump({"rows": rows, "profile": profile, "load_average": load, "threads": torch.get_num_threads()},
                  handle, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
