"""Protect Re-ID images with PixelFade (or a baseline method) and score retrieval on them.

    python protect_image.py --config_file configs/AGW_baseline_market1501.yml \
        --reid_ckpt_path ckpt/market1501_resnet50_nl_model_120.pth \
        --output log/market1501_protect --save_image_npy [KEY VALUE ...]

Rerunning the same command on the same --output resumes after the last finished batch.
Several processes: ``--nproc_per_node N`` (spawned here) or ``torchrun --nproc_per_node=N protect_image.py ...``.
Arguments are parsed before torch is imported, so ``--help`` and argument errors are instant.
"""

import argparse
import os
import sys

from configs.defaults import get_default_config

# (flag, config key, type, choices, help): flags left unset keep the config's value.
FLAGS = (
    (
        "reid_ckpt_path",
        "TEST.WEIGHT",
        str,
        None,
        "authorization Re-ID checkpoint (any format of ckpt/README.md); sysu_mm01/regdb: {trial} = one per trial",
    ),
    ("output", "OUTPUT_DIR", str, None, "output folder (empty: log/<dataset>_protect)"),
    ("dataset", "DATASETS.NAMES", str, None, "market1501 | cuhk03 | msmt17 | sysu_mm01 | regdb | image_folder"),
    ("root", "DATASETS.ROOT_DIR", str, None, "data set root (env PIXELFADE_DATA)"),
    ("batch_size", "PIXELFADE.BATCH_SIZE", int, None, "images protected together"),
    ("max_iter", "PIXELFADE.MAX_ITER", int, None, "optimisation steps per batch"),
    ("fade_num_iter", "PIXELFADE.FADE_NUM_ITER", int, None, "K, number of replacement stages"),
    ("warmup_iter", "PIXELFADE.WARMUP_ITER", int, None, "steps that always replace"),
    ("momentum_w", "PIXELFADE.MOMENTUM", float, None, "gradient momentum"),
    ("beta", "PIXELFADE.BETA", float, None, "step size while the constraint holds"),
    ("beta_temp", "PIXELFADE.BETA_TEMP", float, None, "step size while it does not (0.02 for CUHK03)"),
    ("epsilon", "PIXELFADE.EPSILON", float, None, "bound on the feature MSE"),
    ("seed", "PIXELFADE.SEED", int, None, "random stream of masks and noise"),
    (
        "mode",
        "PIXELFADE.MODE",
        str,
        ("reference", "per_image"),
        "batch-level (reference) or per-image constraint and seeds",
    ),
    (
        "precision",
        "PIXELFADE.PRECISION",
        str,
        ("none", "bf16", "fp16"),
        "autocast of the model in the loop (opt-in speed; changes numbers)",
    ),
    (
        "channels_last",
        "PIXELFADE.CHANNELS_LAST",
        bool,
        None,
        "channels_last memory layout (opt-in speed; changes numbers)",
    ),
    (
        "train_order",
        "PIXELFADE.TRAIN_ORDER",
        str,
        ("identity_balanced", "every_image"),
        "train split with --save_image_npy: the reference's PK batches with random flips, or every image once",
    ),
    (
        "method",
        "PIXELFADE.METHOD",
        str,
        ("pixelfade", "avih", "blur", "mosaic", "noise", "mosaic24_topleft", "blur12_pil", "noise0.5_uint8"),
        "protection method (engine/methods/; avih needs AVIH.KEY_MODEL)",
    ),
    ("blur_sigma", "PIXELFADE.BLUR_SIGMA", float, None, "blur strength"),
    ("mosaic_block", "PIXELFADE.MOSAIC_BLOCK", int, None, "mosaic cell size in pixels"),
    ("noise_std", "PIXELFADE.NOISE_STD", float, None, "additive noise std in normalised units"),
    ("device", "MODEL.DEVICE", str, None, "auto | cpu | cuda | cuda:N"),
    ("num_workers", "DATALOADER.NUM_WORKERS", int, None, "image-loading worker processes (capped at the usable CPUs)"),
    ("threads", "SYSTEM.THREADS", int, None, "torch CPU threads (0: OMP_NUM_THREADS, else the usable CPUs)"),
    ("skip_unreadable", "DATASETS.SKIP_UNREADABLE", bool, None, "leave unreadable images out (listed in results)"),
)
SWITCHES = {"save_image_npy": "PIXELFADE.SAVE_IMAGE_NPY", "save_png": "PIXELFADE.SAVE_PNG"}
FLAG_OF_KEY = {key: f"--{flag}" for flag, key, *_ in FLAGS}
FLAG_OF_KEY.update({key: f"--{flag}" for flag, key in SWITCHES.items()})


def _default(defaults, key):
    node = defaults
    for part in key.split("."):
        node = node[part]
    return node


def _parse_bool(text):
    lowered = str(text).lower()
    if lowered in ("true", "1", "on", "yes"):
        return True
    if lowered in ("false", "0", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser():
    defaults = get_default_config()
    parser = argparse.ArgumentParser(description="PixelFade: protect Re-ID images")
    parser.add_argument("--config_file", default="", help="yacs YAML file (configs/*.yml) merged over the defaults")
    parser.add_argument(
        "--random_init",
        action="store_true",
        help="no checkpoint: an untrained AGW seeded by MODEL.INIT_SEED (demo only)",
    )
    parser.add_argument("--image_folder", help="protect a plain folder of images (no labels, no metrics)")
    parser.add_argument(
        "--save_image_npy",
        action="store_true",
        help="also protect the train split; save original/protected pairs in img_npy/ (PIXELFADE.SAVE_IMAGE_NPY)",
    )
    parser.add_argument(
        "--save_png",
        action="store_true",
        help="store protected images as 8-bit PNG and score Re-ID on them too (PIXELFADE.SAVE_PNG)",
    )
    parser.add_argument("--num_iter", type=int, help="accepted for the reference's commands; unused there and here")
    parser.add_argument("--nproc_per_node", type=int, help="spawn this many processes (ignite.distributed)")
    parser.add_argument(
        "--backend", choices=["gloo", "nccl"], help="distributed backend (default: nccl on CUDA, else gloo)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("settings (each sets a config key; default shown is configs/defaults.py's)")
    for flag, key, kind, choices, text in FLAGS:
        default = _default(defaults, key)
        shown = default if default != "" else "empty"
        group.add_argument(
            f"--{flag}",
            type=_parse_bool if kind is bool else kind,
            choices=choices,
            metavar=None if choices else key.split(".")[-1],
            help=f"{text} [{key}, default: {shown}]",
        )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing config overrides: KEY VALUE ...")
    return parser


def flag_values(args):
    """{config key: value} for every flag given; they win over --config_file and KEY VALUE pairs."""
    values = {key: getattr(args, flag) for flag, key, *_ in FLAGS if getattr(args, flag) is not None}
    values.update({key: True for flag, key in SWITCHES.items() if getattr(args, flag)})
    if args.image_folder:
        values.update({"DATASETS.NAMES": "image_folder", "DATASETS.ROOT_DIR": args.image_folder})
    return values


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.protect.run import ProtectOptions, build_protect_config, run
    from utils.cli import check_flags_before_overrides, check_nproc, report_interrupt
    from utils.cpus import configure_threads
    from utils.errors import PixelFadeError, report_error

    output = None
    try:
        check_flags_before_overrides(parser, args.opts)
        check_nproc(args.nproc_per_node)
        if args.num_iter is not None:
            print("note: --num_iter is unused (as in the reference code); --max_iter sets the steps", file=sys.stderr)
        cfg = build_protect_config(args.config_file, list(args.opts), flag_values(args), FLAG_OF_KEY)
        configure_threads(cfg.SYSTEM.THREADS)
        options = ProtectOptions(random_init=args.random_init, show_progress=not args.no_progress)
        output = cfg.OUTPUT_DIR
        run(cfg, options, args.nproc_per_node, args.backend)
    except PixelFadeError as err:
        return report_error("protect_image.py", err)
    except KeyboardInterrupt:
        return report_interrupt("protect_image.py", output if output and os.path.isdir(output) else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
