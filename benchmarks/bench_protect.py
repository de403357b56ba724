"""Protection speed: engine.methods.pixelfade.protect_batch vs the reference loop vs the model floor.

On the AGW resnet50_nl authorization model (random weights from configs.get_default_config())
at 256x128, per batch size:
  (a) protect_batch (reference mode);
  (b) the reference loop: weight gradients every step, retain_graph, model.zero_grad, the
      constraint test read on the host each step, in-place masked replacement;
  (c) the floor: one model forward + input gradient (frozen model), nothing else.
Precision and channels_last apply to the model call of all three. Each measurement runs in a
fresh process so its peak RSS (and CUDA peak) is its own. Per-step time of (a) and (b) is
(T(steps) - T(1)) / (steps - 1), which removes the fixed cost of the target (and final) forward;
--repeats keeps the fastest of several runs of each, for a shared, noisy machine.

    python benchmarks/bench_protect.py --steps 3 --batch-sizes 4 20 --device cpu
"""

import argparse
import concurrent.futures
import multiprocessing
import resource
import sys

import torch

from configs import get_default_config
from timing import timed
from engine.methods.pixelfade import (
    PixelFadeParams,
    build_fade_masks,
    frozen_parameters,
    input_gradient,
    precision_dtype,
    protect_batch,
)
from engine.methods.pixelfade_reference import reference_protect
from modeling import build_model, resolve_device
from utils.errors import ConfigError

VARIANTS = {
    "a": "protect_batch",
    "b": "reference loop",
    "c": "floor: forward + input grad",
}
REFERENCE_STEPS = 100


def _autocast(device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _best_of(repeats, function, device):
    """Fastest of ``repeats`` runs: the least disturbed by other work on a shared machine."""
    return min(timed(function, device)[0] for _ in range(repeats))


def measure(job):
    """Run one (variant, batch size) measurement; called in a fresh process."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    autocast_dtype = precision_dtype(job["precision"])
    memory_format = torch.channels_last if job["channels_last"] else torch.contiguous_format
    torch.manual_seed(0)
    cfg = get_default_config()
    model = build_model(cfg).to(device).eval()
    if job["channels_last"]:
        model.to(memory_format=torch.channels_last)
    height, width = cfg.INPUT.IMG_SIZE
    batch = job["batch"]
    data = torch.randn(batch, 3, height, width).to(device).contiguous(memory_format=memory_format)
    noise = torch.randn(batch, 3, height, width).to(device).contiguous(memory_format=memory_format)
    params_full = PixelFadeParams(max_iter=job["steps"])
    masks = build_fade_masks(data.numel(), params_full.fade_num_iter, generator=torch.Generator().manual_seed(0))
    masks = masks.to(device)
    with torch.no_grad(), _autocast(device, autocast_dtype):
        target = model(data).float()
    with frozen_parameters(model):
        input_gradient(model, data, target, False, autocast_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if job["variant"] == "c":
        with frozen_parameters(model):
            total = _best_of(
                job["repeats"],
                lambda: [input_gradient(model, data, target, False, autocast_dtype) for _ in range(job["steps"])],
                device,
            )
        per_step, fixed = total / job["steps"], 0.0
    else:
        if job["variant"] == "a":

            def run(params):
                return protect_batch(
                    model,
                    data,
                    masks,
                    noise,
                    params,
                    autocast_dtype=autocast_dtype,
                    channels_last=job["channels_last"],
                )
        else:

            def run(params):
                return reference_protect(
                    model, data, list(masks), params, batch, noise=noise, autocast_dtype=autocast_dtype
                )

        one = _best_of(job["repeats"], lambda: run(PixelFadeParams(max_iter=1)), device)
        total = _best_of(job["repeats"], lambda: run(params_full), device)
        per_step = (total - one) / (job["steps"] - 1)
        fixed = max(one - per_step, 0.0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return dict(job, per_step=per_step, fixed=fixed, peak_rss=peak_rss, cuda_peak=cuda_peak)


# The options every measured job carries (besides its variant and batch size).
JOB_OPTIONS = ("device", "steps", "precision", "channels_last", "threads", "repeats")


def run_isolated(job):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(measure, job).result()


def markdown_table(results):
    header = (
        "| device | batch | variant | precision | channels_last | per step (ms) | per image per step (ms) "
        f"| vs floor | img/s at {REFERENCE_STEPS} steps | peak RSS (MiB) | CUDA peak (MiB) |"
    )
    lines = [header, "|" + "---|" * 11]
    floors = {(r["device"], r["batch"]): r["per_step"] for r in results if r["variant"] == "c"}
    for r in results:
        floor = floors.get((r["device"], r["batch"]))
        ratio = f"{r['per_step'] / floor:.2f}x" if floor else "-"
        per_batch = r["fixed"] + REFERENCE_STEPS * r["per_step"]
        images_per_s = "-" if r["variant"] == "c" else f"{r['batch'] / per_batch:.3f}"
        cuda = "-" if r["cuda_peak"] is None else f"{r['cuda_peak']:.0f}"
        lines.append(
            f"| {r['device']} | {r['batch']} | ({r['variant']}) {VARIANTS[r['variant']]} | {r['precision']} "
            f"| {r['channels_last']} | {1000 * r['per_step']:.1f} | {1000 * r['per_step'] / r['batch']:.1f} "
            f"| {ratio} | {images_per_s} | {r['peak_rss']:.0f} | {cuda} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=REFERENCE_STEPS, help="steps per timed run (>= 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 20])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    parser.add_argument("--precision", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per measurement (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="time each run this many times, keep the fastest")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS))
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (per-step time is the difference of a 1-step and an N-step run)")
    if args.repeats < 1 or args.threads < 0:
        parser.error("--repeats must be >= 1 and --threads >= 0")
    if any(size < 1 for size in args.batch_sizes):
        parser.error("--batch-sizes must be positive")
    try:
        args.device = str(resolve_device(args.device))
    except ConfigError as err:
        parser.error(f"--device {args.device}: {err}")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = []
    for batch in args.batch_sizes:
        for variant in args.variants:
            job = {"variant": variant, "batch": batch, **{key: getattr(args, key) for key in JOB_OPTIONS}}
            result = run_isolated(job)
            print(
                f"# {args.device} batch {batch} ({variant}): {1000 * result['per_step']:.1f} ms/step",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    threads = args.threads or torch.get_num_threads()
    print(
        f"AGW resnet50_nl (random weights), 256x128, {args.steps} timed steps (best of {args.repeats}), "
        f"torch {torch.__version__}, {threads} CPU threads\n"
    )
    print(markdown_table(results))


if __name__ == "__main__":
    main()
