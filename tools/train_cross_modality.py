"""Train the cross-modality AGW (visible-infrared) with the reference's recipe on SYSU-MM01 or RegDB.

    python tools/train_cross_modality.py --dataset sysu_mm01 --root DIR --output DIR [--max_epochs N]
        [--device D] [--num_workers N] [--config_file FILE] [KEY VALUE ...]   (e.g. MODEL.NAME resnet18_nl,
        VI_TRAIN.IMG_SIZE "[64, 32]", MODEL.PRETRAIN_PATH resnet50-19c8e357.pth, DATASETS.TRIALS "[2]")

Writes the reference's best file (``sysu_agw_p4_n8_lr_0.1_seed_0_best.t``, RegDB ``..._trial_<t>_best.t``),
which ``protect_image.py --reid_ckpt_path`` reads (MODEL.FORMAT auto -> agw_vi, the same MODEL.NAME and
INPUT.IMG_SIZE), ``results.json`` and a checkpoint after every epoch; rerunning the same command on the
same --output resumes. See ``engine.train.cross_modality`` for the recipe.
"""
import argparse
import sys

PROG = "train_cross_modality.py"
# (flag, config key, type, help): flags left unset keep the config's value.
FLAGS = (
    ("dataset", "DATASETS.NAMES", str, "sysu_mm01 | regdb"),
    ("root", "DATASETS.ROOT_DIR", str, "data set root"),
    ("output", "OUTPUT_DIR", str, "run folder (rerun on it to resume; empty: log/<dataset>_train_vi)"),
    ("max_epochs", "VI_TRAIN.MAX_EPOCHS", int, "epochs [81, the reference's 0..80]"),
    ("device", "MODEL.DEVICE", str, "auto | cpu | cuda | cuda:N"),
    ("num_workers", "DATALOADER.NUM_WORKERS", int, "image-loading worker processes"),
)
FLAG_OF_KEY = {key: f"--{flag}" for flag, key, *_ in FLAGS}


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", default="", help="yacs YAML file merged over configs/defaults.py")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (one line per epoch only)")
    for flag, key, kind, text in FLAGS:
        parser.add_argument(f"--{flag}", type=kind, metavar=key.split(".")[-1], help=f"{text} [{key}]")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing config overrides: KEY VALUE ...")
    return parser


def main(argv=None):
    from utils.errors import PixelFadeError, report_error

    parser = build_parser()
    parser.error = lambda message: sys.exit(report_error(PROG, message))
    args = parser.parse_args(argv)
    from configs import config_with_flags
    from engine.train.cross_modality import TrainOptions, train_cross_modality, validate_vi_train_config

    try:
        values = {key: getattr(args, flag) for flag, key, *_ in FLAGS if getattr(args, flag) is not None}
        cfg = config_with_flags(args.config_file, list(args.opts), values, "train_vi")
        validate_vi_train_config(cfg, FLAG_OF_KEY)
        train_cross_modality(cfg, TrainOptions(show_progress=False if args.no_progress else None))
    except PixelFadeError as err:
        return report_error(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
