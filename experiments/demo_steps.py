"""What the scenario demos (experiments/demo_vi.py, experiments/demo_t2i.py) share.

Each demo runs the public commands (``protect_image.main``, ``recovery_attack.main``) as steps, so a
rerun resumes every step in its own folder; this module runs a step, reads the runs back and is the
demos' command ending.
"""
import json
import os
import sys

import protect_image
import recovery_attack
from utils.cli import demo_argument_parser, run_command
from utils.cpus import configure_threads

# The synthetic data set's folder inside a demo's output folder.
DATA_DIR = "data"


class StepFailed(Exception):
    """A command of the demo stopped with a non-zero exit status (it printed its own message)."""

    def __init__(self, step, code):
        super().__init__(f"{step} stopped with exit status {code}")
        self.step, self.code = step, code


def run_step(step, main, argv):
    code = main(argv)
    if code != 0:
        raise StepFailed(step, code)


def common_flags(device, threads, show_progress):
    return ["--device", device, "--num_workers", "0", "--threads", str(threads)] + (
        [] if show_progress else ["--no_progress"])


def protect_step(output, dataset, scale, method, checkpoint, flags, overrides):
    """protect_image.py as a user runs it on ``dataset`` (its format's defaults), at the demo's size, pairs
    saved for the attack; returns the run folder ``output/method``."""
    run_dir = os.path.join(output, method)
    run_step(f"protect_image.py ({method})", protect_image.main, [
        "--dataset", dataset, "--root", os.path.join(output, DATA_DIR), "--reid_ckpt_path", checkpoint,
        "--output", run_dir, "--save_image_npy", "--method", method, "--batch_size", str(scale.batch_size),
        "--max_iter", str(scale.max_iter), "--blur_sigma", str(scale.blur_sigma), *flags,
        "INPUT.IMG_SIZE", f"[{scale.height}, {scale.width}]", "PIXELFADE.NUM_GRIDS", "0", *overrides])
    return run_dir


def attack_step(run_dir, scale, method, flags):
    """The reference attacker (the paper's) trained on the run's train pairs, scored on its test pairs."""
    run_step(f"recovery_attack.py ({method})", recovery_attack.main, [
        "--npy_path", run_dir, "--attacker", "reference", "--total_epochs", str(scale.attack_epochs), *flags,
        "ATTACK.NGF", str(scale.attack_ngf), "ATTACK.EVAL_EPOCHS", "[]", "ATTACK.NUM_GRIDS", "1"])


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def last_evaluation(attack_results):
    """The reference attacker's record of its last scored epoch."""
    evaluations = attack_results["reference"]["evaluations"]
    return evaluations[max(evaluations, key=int)]


def demo_main(prog, description, run_demo, scales, default_output, argv=None, threads=0):
    """A demo's command: ``run_demo`` at ``scales`` = (default, small); prints the report, or which step
    stopped and that a rerun resumes. ``threads``: the default of --threads."""
    threads_help = (f"torch CPU threads (default {threads}); 0: OMP_NUM_THREADS when set, else the usable CPUs"
                    if threads else "torch CPU threads; 0: OMP_NUM_THREADS when set, else the usable CPUs")
    args = demo_argument_parser(description, default_output, output_help="output folder (rerun on it to resume)",
                                prog=prog, threads_help=threads_help, threads=threads).parse_args(argv)
    default_scale, small_scale = scales

    def work(state):
        configure_threads(args.threads, key="--threads")
        state.output = args.output
        try:
            summary = run_demo(args.output, small_scale if args.small else default_scale, args.device, args.threads,
                               show_progress=not args.no_progress)
        except StepFailed as failed:
            print(f"{prog}: {failed}; rerun the same command to resume", file=sys.stderr)
            return failed.code
        print(summary["report"])
        return 0

    return run_command(prog, work)
