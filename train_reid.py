"""Train an AGW authorization Re-ID model with the ReID-Survey recipe (README, "Training an authorization model").

    python train_reid.py --config_file configs/AGW_baseline_market1501.yml --output log/train_market1501 \
        MODEL.PRETRAIN_PATH ckpt/resnet50-19c8e357.pth MODEL.WEIGHT_REGULARIZED_TRIPLET on [KEY VALUE ...]

Writes ``<MODEL.NAME>_model_<epoch>.pth`` (a plain state dict that ``protect_image.py
--reid_ckpt_path`` reads) every SOLVER.CHECKPOINT_PERIOD epochs and at the end, a resumable
``training_checkpoint_<epoch>.pt``, ``results.json`` / ``results.md``, ``training_curves.png``,
``config.yaml`` and ``log.txt``. Rerunning the same command on the same --output resumes after the
last checkpoint. Several processes: ``--nproc_per_node N`` or ``torchrun --nproc_per_node=N train_reid.py ...``.
Arguments are parsed before torch is imported, so ``--help`` and argument errors are instant.
"""

import argparse
import os
import sys

from configs.defaults import get_default_config

# (flag, config key, type, help): flags left unset keep the config's value.
FLAGS = (
    ("output", "OUTPUT_DIR", str, "output folder (empty: log/<dataset>_train)"),
    ("root", "DATASETS.ROOT_DIR", str, "data set root (env PIXELFADE_DATA)"),
    ("dataset", "DATASETS.NAMES", str, "market1501 | cuhk03 | msmt17"),
    ("device", "MODEL.DEVICE", str, "auto | cpu | cuda | cuda:N"),
    ("max_epochs", "SOLVER.MAX_EPOCHS", int, "training epochs"),
    ("num_workers", "DATALOADER.NUM_WORKERS", int, "image-loading worker processes (capped at the usable CPUs)"),
    ("threads", "SYSTEM.THREADS", int, "torch CPU threads (0: OMP_NUM_THREADS, else the usable CPUs)"),
)
FLAG_OF_KEY = {key: f"--{flag}" for flag, key, *_ in FLAGS}


def _default(defaults, key):
    node = defaults
    for part in key.split("."):
        node = node[part]
    return node


def build_parser():
    defaults = get_default_config()
    parser = argparse.ArgumentParser(description="PixelFade: train an AGW authorization Re-ID model")
    parser.add_argument("--config_file", default="", help="yacs YAML file (configs/*.yml) merged over the defaults")
    parser.add_argument("--nproc_per_node", type=int, help="spawn this many processes (ignite.distributed)")
    parser.add_argument(
        "--backend", choices=["gloo", "nccl"], help="distributed backend (default: nccl on CUDA, else gloo)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("settings (each sets a config key; default shown is configs/defaults.py's)")
    for flag, key, kind, text in FLAGS:
        default = _default(defaults, key)
        group.add_argument(
            f"--{flag}",
            type=kind,
            metavar=key.split(".")[-1],
            help=f"{text} [{key}, default: {default if default != '' else 'empty'}]",
        )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing config overrides: KEY VALUE ...")
    return parser


def build_train_config(config_file, opts, flag_values):
    """Defaults < --config_file < trailing KEY VALUE overrides < flags; validated and frozen."""
    from configs import config_with_flags
    from engine.train.reid import validate_train_config

    cfg = config_with_flags(config_file, opts, flag_values, "train")
    validate_train_config(cfg, FLAG_OF_KEY)
    return cfg


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.train.reid import TrainOptions, run
    from utils.cli import check_flags_before_overrides, check_nproc, report_interrupt
    from utils.cpus import configure_threads
    from utils.errors import PixelFadeError, report_error

    output = None
    try:
        check_flags_before_overrides(parser, args.opts)
        check_nproc(args.nproc_per_node)
        values = {key: getattr(args, flag) for flag, key, *_ in FLAGS if getattr(args, flag) is not None}
        cfg = build_train_config(args.config_file, list(args.opts), values)
        configure_threads(cfg.SYSTEM.THREADS)
        output = cfg.OUTPUT_DIR
        run(cfg, TrainOptions(show_progress=not args.no_progress), args.nproc_per_node, args.backend)
    except PixelFadeError as err:
        return report_error("train_reid.py", err)
    except KeyboardInterrupt:
        return report_interrupt("train_reid.py", output if output and os.path.isdir(output) else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
