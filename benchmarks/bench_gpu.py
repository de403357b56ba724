"""Throughput, peak memory and image differences of the protection loop's speed options on one device.

For each model, batch size and variant (the CUDA math settings, autocast precision, memory layout, torch.compile)
three things are timed on the same random batch (reference mode, the default PixelFade hyper-parameters):
  loop       engine.methods.pixelfade.protect_batch: input gradient only, frozen model (the implementation);
  reference  engine.methods.pixelfade_reference.reference_protect: weight gradients, retained graph, a host sync per step;
  floor      one forward + input gradient of the model (nothing else): what any loop must pay per step.
Per-step time of the loops is (T(steps) - T(1)) / (steps - 1), which removes the fixed cost of the target and final
forwards; images/s are at MAX_ITER 100 (the paper's setting): batch / (fixed + 100 x per step). Each timing follows a
warm-up run (cuDNN autotuning, lazy initialisation, compilation). Peak memory is torch.cuda.max_memory_allocated of
each measurement (peak RSS of the process on a CPU). The loop's protected images after ``steps`` steps are compared
with the strict fp32 variant's at the same batch (max / mean abs difference, normalised units).

Variants (CUDA flags; harmless on a CPU):
  fp32           TF32 off in cuBLAS and cuDNN, deterministic cuDNN kernels, no autotuning (the protection run's choice)
  fp32_autotune  the same with cuDNN autotuning (benchmark on, non-deterministic kernels allowed)
  tf32           TF32 on in cuBLAS and cuDNN, deterministic
  tf32_cl        tf32 + channels_last
  bf16           bf16 autocast of the model calls (TF32 for what stays fp32), deterministic
  bf16_cl        bf16 + channels_last
  *_compile      that variant with the model wrapped in torch.compile (--compile-variant at --compile-batch only)

Models: agw (AGW resnet50_nl, random weights, 256x128), agw_vi (modeling.agw_vi.EmbedNet, visible branch,
288x144; skipped when the module is absent), clip (open_clip ViT-B/16 encode_image at 384x128, random weights;
skipped when open_clip is not importable). Results are appended to --out/gpu_bench.json after every measurement (a
run cut short keeps what it measured) and the Markdown tables (--out/gpu_bench.md) are rewritten from all of it.

    python benchmarks/bench_gpu.py --device cuda --out log/gpu_check --models agw
    python benchmarks/bench_gpu.py --device cuda --out log/gpu_check --models agw --compile-only
    python benchmarks/bench_gpu.py --device cpu --tiny --out /tmp/bench_gpu     # every code path, tiny sizes
"""

import argparse
import inspect
import json
import os
import platform
import resource
import sys
import time
import traceback
from contextlib import nullcontext

import torch
from torch import nn

from configs import get_default_config
from timing import timed
from engine.methods.pixelfade import PixelFadeParams, build_fade_masks, frozen_parameters, input_gradient, protect_batch
from engine.methods.pixelfade_reference import reference_protect
from modeling import build_model, resolve_device
from utils.errors import ConfigError

REFERENCE_STEPS = 100
BASELINE = "fp32"
VARIANTS = {
    "fp32": dict(tf32=False, precision=None, channels_last=False, deterministic=True),
    "fp32_autotune": dict(tf32=False, precision=None, channels_last=False, deterministic=False),
    "tf32": dict(tf32=True, precision=None, channels_last=False, deterministic=True),
    "tf32_cl": dict(tf32=True, precision=None, channels_last=True, deterministic=True),
    "bf16": dict(tf32=True, precision=torch.bfloat16, channels_last=False, deterministic=True),
    "bf16_cl": dict(tf32=True, precision=torch.bfloat16, channels_last=True, deterministic=True),
}
# (input size, tiny input size, variants) per model; channels_last means nothing to a ViT.
MODELS = {
    "agw": ((256, 128), (32, 16), list(VARIANTS)),
    "agw_vi": ((288, 144), (72, 36), ["fp32", "tf32", "bf16", "bf16_cl"]),
    "clip": ((384, 128), (64, 32), ["fp32", "tf32", "bf16"]),
}
KINDS = ("floor", "loop", "reference")
JSON_NAME, TABLE_NAME = "gpu_bench.json", "gpu_bench.md"


class SkipModel(Exception):
    """The model cannot be built here (its module or package is absent): reported, not an error."""


class CallWith(nn.Module):
    """A model whose feature needs another call (``encode_image``, ``net(x, x, modal)``) as ``model(x)``."""

    def __init__(self, net, call):
        super().__init__()
        self.net = net
        self.call = call

    def forward(self, images):
        output = self.call(self.net, images)
        # The cross-modality AGW returns (pooled, BNNeck) features in eval mode; the BNNeck one is scored.
        return output[-1] if isinstance(output, (tuple, list)) else output


def build_agw(size):
    cfg = get_default_config()
    cfg.INPUT.IMG_SIZE = list(size)
    torch.manual_seed(0)
    return build_model(cfg)


def build_agw_vi(size):
    try:
        from modeling.agw_vi import EmbedNet
    except ImportError as err:
        raise SkipModel(f"modeling.agw_vi.EmbedNet is not importable ({err})") from None
    required = {name: param for name, param in inspect.signature(EmbedNet).parameters.items()
                if param.default is inspect.Parameter.empty
                and param.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    arguments = {}
    for name in required:
        if "class" not in name:
            raise SkipModel(f"EmbedNet needs {name!r}, which this benchmark does not know how to set")
        arguments[name] = 395  # SYSU-MM01's training identities; the classifier plays no part in the feature
    torch.manual_seed(0)
    return CallWith(EmbedNet(**arguments), lambda net, images: net(images, images, 1))


def build_clip(size):
    try:
        import open_clip
    except ImportError as err:
        raise SkipModel(f"open_clip is not importable ({err})") from None
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True, force_image_size=tuple(size))
    return CallWith(model, lambda net, images: net.encode_image(images))


BUILDERS = {"agw": build_agw, "agw_vi": build_agw_vi, "clip": build_clip}


def apply_math(settings):
    """Set the process-wide CUDA math flags of a variant."""
    torch.backends.cuda.matmul.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.deterministic = settings["deterministic"]
    torch.backends.cudnn.benchmark = not settings["deterministic"]


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Problem:
    """One batch: the images, noise and stage masks every variant of a (model, batch size) protects."""

    def __init__(self, batch, size, device, steps):
        generator = torch.Generator().manual_seed(batch)
        shape = (batch, 3, *size)
        self.data = torch.randn(shape, generator=generator).to(device)
        self.noise = torch.randn(shape, generator=generator).to(device)
        self.params = PixelFadeParams(max_iter=steps)
        self.masks = build_fade_masks(self.data.numel(), self.params.fade_num_iter, generator=generator).to(device)
        self.steps = steps


def measure(model, problem, kind, settings, device):
    """{'per_step', 'fixed', 'first_call', 'peak_mib', 'protected'} of one kind of run (protected: loop only)."""
    dtype = settings["precision"]
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    data = problem.data.contiguous(memory_format=memory_format)
    reset_peak(device)
    if kind == "floor":
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with frozen_parameters(model):
            with torch.no_grad(), autocast:
                target = model(data).float()
            first, _ = timed(lambda: input_gradient(model, data, target, False, dtype), device)
            total, _ = timed(lambda: [input_gradient(model, data, target, False, dtype)
                                      for _ in range(problem.steps)], device)
        return dict(per_step=total / problem.steps, fixed=0.0, first_call=first, peak_mib=peak_mib(device))

    def run(steps):
        params = PixelFadeParams(max_iter=steps)
        if kind == "loop":
            return protect_batch(model, data, problem.masks, problem.noise, params, autocast_dtype=dtype,
                                 channels_last=settings["channels_last"]).protected
        return reference_protect(model, data, list(problem.masks), params, data.shape[0], noise=problem.noise,
                                 autocast_dtype=dtype)

    first, _ = timed(lambda: run(2), device)
    one, _ = timed(lambda: run(1), device)
    total, protected = timed(lambda: run(problem.steps), device)
    per_step = (total - one) / (problem.steps - 1)
    return dict(per_step=per_step, fixed=max(one - per_step, 0.0), first_call=first, peak_mib=peak_mib(device),
                protected=protected.detach().float().cpu() if kind == "loop" else None)


def images_per_s(row):
    seconds = (0.0 if row["kind"] == "floor" else row["fixed"]) + REFERENCE_STEPS * row["per_step"]
    return row["batch"] / seconds


class Results:
    """Rows of the JSON file, rewritten with the Markdown tables after every measurement."""

    def __init__(self, out, meta):
        self.json_path, self.table_path = os.path.join(out, JSON_NAME), os.path.join(out, TABLE_NAME)
        self.data = {"runs": [], "rows": []}
        if os.path.exists(self.json_path):
            with open(self.json_path) as handle:
                self.data = json.load(handle)
        self.data["runs"].append(meta)

    def add(self, row):
        self.data["rows"] = [r for r in self.data["rows"] if _key(r) != _key(row)] + [row]
        self.save()

    def save(self):
        with open(self.json_path + ".tmp", "w") as handle:
            json.dump(self.data, handle, indent=1)
        os.replace(self.json_path + ".tmp", self.json_path)
        with open(self.table_path + ".tmp", "w") as handle:
            handle.write(markdown(self.data))
        os.replace(self.table_path + ".tmp", self.table_path)


def _key(row):
    return (row["model"], row["batch"], row["variant"], row["kind"])


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(data):
    """The result tables: one row per (model, batch, variant), then torch.compile, then skips and errors."""
    rows = data["rows"]
    by_key = {_key(r): r for r in rows if "error" not in r and "skipped" not in r}
    lines = []
    for run in data["runs"]:
        lines.append(f"- {run['device_name']}, torch {run['torch']}, CUDA {run['cuda']}, cuDNN {run['cudnn']}, "
                     f"{run['steps']} timed steps, `{run['command']}`")
    lines += [
        "",
        "| model | input | batch | variant | loop ms/step | loop img/s (100 steps) | loop vs floor "
        "| reference img/s | loop speed-up vs reference | floor ms/step | peak MiB loop / reference / floor "
        "| max / mean abs diff vs fp32 |",
        "|" + "---|" * 12,
    ]
    groups = sorted({(r["model"], r["batch"], r["variant"]) for r in by_key.values()},
                    key=lambda k: (list(MODELS).index(k[0]), k[1], k[2].endswith("_compile"), _variant_order(k[2])))
    for model, batch, variant in groups:
        loop, ref, floor = (by_key.get((model, batch, variant, kind)) for kind in ("loop", "reference", "floor"))
        any_row = loop or ref or floor
        ratio = loop["per_step"] / floor["per_step"] if loop and floor else None
        speedup = images_per_s(loop) / images_per_s(ref) if loop and ref else None
        diff = "-" if not loop or loop.get("max_abs_diff") is None else (
            f"{loop['max_abs_diff']:.3g} / {loop['mean_abs_diff']:.3g}")
        lines.append(
            f"| {model} | {any_row['input']} | {batch} | {variant} "
            f"| {_fmt(loop and 1000 * loop['per_step'], '.1f')} | {_fmt(loop and images_per_s(loop), '.1f')} "
            f"| {_fmt(ratio, '.2f')} | {_fmt(ref and images_per_s(ref), '.1f')} | {_fmt(speedup, '.2f')} "
            f"| {_fmt(floor and 1000 * floor['per_step'], '.1f')} "
            f"| {' / '.join(_fmt(r and r['peak_mib'], '.0f') for r in (loop, ref, floor))} | {diff} |"
        )
    compiled = [r for r in by_key.values() if r["variant"].endswith("_compile")]
    if compiled:
        lines += ["", "| model | batch | variant | kind | first call, with compilation (s) | steady ms/step "
                  "| eager ms/step | speed-up vs eager |", "|" + "---|" * 8]
        for r in sorted(compiled, key=lambda r: (r["model"], r["batch"], r["kind"])):
            eager = by_key.get((r["model"], r["batch"], r["variant"].removesuffix("_compile"), r["kind"]))
            lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['kind']} | {r['first_call']:.1f} "
                         f"| {1000 * r['per_step']:.1f} | {_fmt(eager and 1000 * eager['per_step'], '.1f')} "
                         f"| {_fmt(eager and eager['per_step'] / r['per_step'], '.2f')} |")
    notes = [r for r in rows if "error" in r or "skipped" in r]
    if notes:
        lines.append("")
        for r in notes:
            what = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}"
            lines.append(f"- {r['model']} {r.get('batch', '')} {r.get('variant', '')} {r.get('kind', '')}: {what}")
    lines += ["", "img/s: protected images per second at MAX_ITER 100 (floor: 100 steps of the floor alone). "
              "Loop vs floor: per-step time of the loop over the floor's (1.00 = the loop costs nothing beyond the "
              "model). Differences: the loop's protected images after the timed steps against the fp32 variant's "
              "at the same batch, normalised units.", ""]
    return "\n".join(lines)


def _variant_order(name):
    base = name.removesuffix("_compile")
    return list(VARIANTS).index(base) if base in VARIANTS else len(VARIANTS)


def bench_model(name, args, device, results):
    size = MODELS[name][1] if args.tiny else MODELS[name][0]
    base = {"model": name, "input": f"{size[0]}x{size[1]}"}
    try:
        model = BUILDERS[name](size).to(device).eval()
    except SkipModel as err:
        print(f"[bench_gpu] {name}: skipped, {err}", flush=True)
        results.add({**base, "batch": 0, "variant": "", "kind": "", "skipped": str(err)})
        return True
    variants = [v for v in (args.variants or MODELS[name][2]) if v in MODELS[name][2]]
    if args.tiny and name != "agw":  # a dry run of the other models' paths: the two precisions
        variants = [v for v in variants if v in ("fp32", "bf16")]
    jobs = []
    if not args.compile_only:
        jobs += [(batch, variant, False) for batch in args.batch_sizes for variant in variants]
    if args.compile_batch and name in args.compile_models:
        jobs.append((args.compile_batch, args.compile_variant, True))
    ok = True
    baselines = {}
    for batch, variant, compiled in jobs:
        settings = VARIANTS[variant]
        label = variant + ("_compile" if compiled else "")
        problem = Problem(batch, size, device, args.steps)
        if batch not in baselines:  # the fp32 images to compare with (a --compile-only run has not made them)
            apply_math(VARIANTS[BASELINE])
            baselines[batch] = protect_batch(model.to(memory_format=torch.contiguous_format), problem.data,
                                             problem.masks, problem.noise, problem.params).protected.cpu()
        apply_math(settings)
        net = model.to(memory_format=torch.channels_last if settings["channels_last"] else torch.contiguous_format)
        if compiled:
            net = torch.compile(net, backend=args.compile_backend).eval()
        kinds = ("floor", "loop") if compiled else KINDS
        for kind in kinds:
            row = {**base, "batch": batch, "variant": label, "kind": kind}
            # One failing measurement (out of memory, a compile error) must not stop the others.
            try:
                measured = measure(net, problem, kind, settings, device)
            except Exception as err:  # noqa: BLE001
                ok = False
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
                print(f"[bench_gpu] {name} batch {batch} {label} {kind}: {row['error']}", flush=True)
                traceback.print_exc(limit=3)
                results.add(row)
                continue
            protected = measured.pop("protected", None)
            if protected is not None:
                difference = (protected.double() - baselines[batch].double()).abs()
                measured.update(max_abs_diff=difference.max().item(), mean_abs_diff=difference.mean().item())
            row.update(measured)
            results.add(row)
            print(f"[bench_gpu] {name} batch {batch} {label} {kind}: {1000 * row['per_step']:.1f} ms/step, "
                  f"first call {row['first_call']:.2f} s, peak {row['peak_mib']:.0f} MiB", flush=True)
        if compiled:
            torch._dynamo.reset()
    model.to(memory_format=torch.contiguous_format)
    return ok


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    parser.add_argument("--out", default=os.path.join("log", "gpu_check"),
                        help=f"folder of {JSON_NAME} and {TABLE_NAME} (rows are added to an existing JSON)")
    parser.add_argument("--tiny", action="store_true", help="tiny inputs, batch 2, 2 steps: a dry run")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default 20 64 128 (--tiny: 2)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all the model's")
    parser.add_argument("--steps", type=int, help="timed steps per run, >= 2 (default 10; --tiny: 2)")
    parser.add_argument("--compile-batch", type=int, help="time torch.compile at this batch (default: none)")
    parser.add_argument("--compile-variant", choices=list(VARIANTS), default="bf16_cl")
    parser.add_argument("--compile-models", nargs="+", choices=list(MODELS), default=["agw"])
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor; --tiny: aot_eager, "
                        "which skips the minutes of code generation on a CPU)")
    parser.add_argument("--compile-only", action="store_true", help="only the torch.compile measurement")
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ([2] if args.tiny else [20, 64, 128])
    args.steps = args.steps or (2 if args.tiny else 10)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.tiny else "inductor")
    if args.steps < 2 or any(b < 1 for b in args.batch_sizes) or (args.compile_batch or 1) < 1:
        parser.error("--steps must be >= 2 and batch sizes positive")
    try:
        args.device = str(resolve_device(args.device))
    except ConfigError as err:
        parser.error(f"--device {args.device}: {err}")
    if args.compile_only and not args.compile_batch:
        parser.error("--compile-only needs --compile-batch")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    cuda = device.type == "cuda"
    meta = {
        "command": "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device_name": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or 'x86-64'}, "
                                                                       f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "steps": args.steps,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results = Results(args.out, meta)
    results.save()
    ok = True
    for name in args.models:
        started = time.perf_counter()
        ok = bench_model(name, args, device, results) and ok
        print(f"[bench_gpu] {name}: {time.perf_counter() - started:.1f} s", flush=True)
    print(markdown(results.data))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
