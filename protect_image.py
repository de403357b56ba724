"""Protect Re-ID images with PixelFade (or a baseline method) and score retrieval on them.

    python protect_image.py --config_file configs/AGW_baseline_market1501.yml \
        --reid_ckpt_path ckpt/market1501_resnet50_nl_model_120.pth \
        --output log/market1501_protect --save_image_npy [KEY VALUE ...]

Rerunning the same command on the same --output resumes after the last finished batch.
Several processes: ``--nproc_per_node N`` (spawned here) or ``torchrun --nproc_per_node=N protect_image.py ...``.
"""
import argparse
import os
import sys

import ignite.distributed as idist
import torch

from configs import ConfigError, load_config
from data.datasets import DatasetError
from utils.errors import NonFiniteError
from engine.protect_pipeline import ProtectOptions, run_protection
from engine.run_store import RunConflictError
from modeling import CheckpointError

# flag -> config key; flags left unset keep the config file's value.
FLAG_KEYS = {
    "batch_size": "PIXELFADE.BATCH_SIZE",
    "max_iter": "PIXELFADE.MAX_ITER",
    "fade_num_iter": "PIXELFADE.FADE_NUM_ITER",
    "warmup_iter": "PIXELFADE.WARMUP_ITER",
    "momentum_w": "PIXELFADE.MOMENTUM",
    "beta": "PIXELFADE.BETA",
    "beta_temp": "PIXELFADE.BETA_TEMP",
    "epsilon": "PIXELFADE.EPSILON",
    "seed": "PIXELFADE.SEED",
    "method": "PIXELFADE.METHOD",
    "mode": "PIXELFADE.MODE",
    "precision": "PIXELFADE.PRECISION",
    "blur_sigma": "PIXELFADE.BLUR_SIGMA",
    "mosaic_block": "PIXELFADE.MOSAIC_BLOCK",
    "noise_std": "PIXELFADE.NOISE_STD",
    "reid_ckpt_path": "TEST.WEIGHT",
    "output": "OUTPUT_DIR",
    "dataset": "DATASETS.NAMES",
    "root": "DATASETS.ROOT_DIR",
    "device": "MODEL.DEVICE",
    "num_workers": "DATALOADER.NUM_WORKERS",
}


def build_parser():
    parser = argparse.ArgumentParser(description="PixelFade: protect Re-ID images", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config_file", default="", help="yacs YAML file (configs/*.yml)")
    parser.add_argument("--reid_ckpt_path", help="authorization Re-ID checkpoint (any format of ckpt/README.md)")
    parser.add_argument("--random_init", action="store_true", help="no checkpoint: an untrained AGW seeded by MODEL.INIT_SEED (demo only)")
    parser.add_argument("--output", help="output directory (default: OUTPUT_DIR, else log/<dataset>_protect)")
    parser.add_argument("--dataset", help="market1501 | cuhk03 | msmt17 | image_folder (DATASETS.NAMES)")
    parser.add_argument("--root", help="data set root (DATASETS.ROOT_DIR; env PIXELFADE_DATA)")
    parser.add_argument("--image_folder", help="protect a plain folder of images (no labels, no metrics)")
    parser.add_argument("--save_image_npy", action="store_true", help="also protect the train split; save original/protected pairs in img_npy/")
    parser.add_argument("--save_png", action="store_true", help="store protected images as 8-bit PNG and score Re-ID on them too")
    group = parser.add_argument_group("PixelFade (reference defaults in configs/defaults.py)")
    group.add_argument("--batch_size", type=int)
    group.add_argument("--max_iter", type=int)
    group.add_argument("--fade_num_iter", type=int, help="K, number of replacement stages")
    group.add_argument("--warmup_iter", type=int)
    group.add_argument("--momentum_w", type=float)
    group.add_argument("--beta", type=float)
    group.add_argument("--beta_temp", type=float, help="0.04 Market-1501/MSMT17, 0.02 CUHK03")
    group.add_argument("--epsilon", type=float)
    group.add_argument("--num_iter", type=int, help="accepted for the reference's commands; unused there and here")
    group.add_argument("--seed", type=int)
    group.add_argument("--mode", choices=["reference", "per_image"], help="batch-level (reference) or per-image constraint and seeds")
    group.add_argument("--precision", choices=["none", "bf16", "fp16"], help="autocast of the model inside the loop")
    base = parser.add_argument_group("baseline methods for comparison")
    base.add_argument("--method", choices=["pixelfade", "blur", "mosaic", "noise"])
    base.add_argument("--blur_sigma", type=float)
    base.add_argument("--mosaic_block", type=int)
    base.add_argument("--noise_std", type=float)
    run = parser.add_argument_group("execution")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--num_workers", type=int)
    run.add_argument("--nproc_per_node", type=int, default=None, help="spawn this many processes (ignite.distributed)")
    run.add_argument("--backend", choices=["gloo", "nccl"], help="distributed backend (default: nccl on CUDA, else gloo)")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing yacs overrides: KEY VALUE ...")
    return parser


def config_from_args(args):
    """Defaults < --config_file < trailing KEY VALUE overrides < flags (as in recovery_attack.py)."""
    overrides = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides += [key, str(value)]
    if args.image_folder:
        overrides += ["DATASETS.NAMES", "image_folder", "DATASETS.ROOT_DIR", args.image_folder]
    if args.save_image_npy:
        overrides += ["PIXELFADE.SAVE_IMAGE_NPY", "True"]
    if args.save_png:
        overrides += ["PIXELFADE.SAVE_PNG", "True"]
    cfg = load_config(args.config_file, list(args.opts) + overrides)
    if not cfg.OUTPUT_DIR:
        cfg.defrost()
        cfg.OUTPUT_DIR = os.path.join("log", f"{cfg.DATASETS.NAMES}_protect")
        cfg.freeze()
    if cfg.DATASETS.NAMES == "image_folder" and cfg.PIXELFADE.SAVE_IMAGE_NPY:
        raise ConfigError("--save_image_npy needs a labelled data set with a train split, not --image_folder")
    return cfg


def launch(cfg, options, nproc_per_node=None, backend=None):
    """Run ``run_protection`` in one process, under torchrun, or in ``nproc_per_node`` spawned ones."""
    under_launcher = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if backend is None and (under_launcher or (nproc_per_node or 1) > 1):
        backend = "nccl" if torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu" else "gloo"
    spawn = nproc_per_node if nproc_per_node and nproc_per_node > 1 and not under_launcher else None
    with idist.Parallel(backend=backend, nproc_per_node=spawn) as parallel:
        parallel.run(run_protection, cfg, options)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.num_iter is not None:
            print("note: --num_iter is unused (as in the reference code); --max_iter sets the steps", file=sys.stderr)
        cfg = config_from_args(args)
        options = ProtectOptions(random_init=args.random_init, show_progress=not args.no_progress)
        launch(cfg, options, args.nproc_per_node, args.backend)
    except (ConfigError, DatasetError, CheckpointError, RunConflictError, NonFiniteError,
            FileNotFoundError, ValueError) as err:
        print(f"protect_image.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
