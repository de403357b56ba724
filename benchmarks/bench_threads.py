"""torch's thread count against protection time on a machine shared with other jobs.

Runs ``protect_image.py`` (untrained AGW resnet50_nl, random init) on a tiny generated Market-1501
once per repeat and thread setting, interleaved so that load drifts hit every setting alike, each
in a fresh process with a fresh output folder. ``0`` is the default (SYSTEM.THREADS 0: the CPUs this
process may use) and runs with OMP_NUM_THREADS removed from the environment. Reports the wall time
of each run, the protection time the run itself logged, and the 1-minute load average around each.

    python benchmarks/bench_threads.py --threads 1 0 --repeats 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="settings to compare (0: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=10, help="PixelFade steps per batch")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"))
    parser.add_argument("--num-ids", type=int, default=3, help="identities of the generated set (2 cameras, 2 images each)")
    parser.add_argument("--work", default="", help="folder for the data and outputs (default: a temporary one)")
    parser.add_argument("--json", default="", help="also write the measurements here")
    return parser.parse_args(argv)


def make_data(root, num_ids, height, width):
    sys.path.insert(0, REPO)
    from data.synthetic import make_market1501

    make_market1501(root, num_ids=num_ids, num_cams=2, images_per_id_cam=2, height=height, width=width, seed=0)


def protect_once(args, root, output, threads):
    """One protect_image.py run in a fresh process; (wall seconds, the run's own seconds, load before, after)."""
    env = {k: v for k, v in os.environ.items() if not (threads == 0 and k == "OMP_NUM_THREADS")}
    height, width = args.image_size
    command = [sys.executable, os.path.join(REPO, "protect_image.py"), "--random_init", "--root", root,
               "--output", output, "--device", "cpu", "--no_progress", "--batch_size", str(args.batch_size),
               "--max_iter", str(args.max_iter), "--num_workers", "0"]
    if threads:
        command += ["--threads", str(threads)]
    command += ["INPUT.IMG_SIZE", f"[{height}, {width}]", "PIXELFADE.NUM_GRIDS", "0"]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    with open(os.path.join(output, "results.json")) as handle:
        own = json.load(handle)["run"]["seconds_this_run"]
    return wall, own, load_before, os.getloadavg()[0]


def main(argv=None):
    args = parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="bench_threads_")
    root = os.path.join(work, "data")
    if not os.path.isdir(root):
        make_data(root, args.num_ids, *args.image_size)
    runs = {threads: [] for threads in args.threads}
    for repeat in range(args.repeats):
        for threads in args.threads:
            output = os.path.join(work, f"out_t{threads}_r{repeat}")
            runs[threads].append(protect_once(args, root, output, threads))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"protect_image.py, resnet50_nl random init, {args.image_size[0]}x{args.image_size[1]}, "
          f"batch {args.batch_size}, {args.max_iter} steps, {args.num_ids * 8} images; {cpus} usable CPUs")
    print("| threads | wall s per run (each) | median | run's own s (median) | load average around the runs |")
    print("|---|---|---|---|---|")
    for threads, rows in runs.items():
        walls = [row[0] for row in rows]
        loads = [load for row in rows for load in row[2:]]
        label = "default (0)" if threads == 0 else str(threads)
        print(f"| {label} | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} | "
              f"{statistics.median(row[1] for row in rows):.1f} | {min(loads):.1f}-{max(loads):.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({str(k): v for k, v in runs.items()}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
