"""Train the cross-modality AGW (visible-infrared) with the reference's recipe on SYSU-MM01 or RegDB.

    python tools/train_cross_modality.py --dataset sysu_mm01 --root DIR --output DIR [--max_epochs N]
        [--device D] [--num_workers N] [--config_file FILE] [KEY VALUE ...]   (e.g. MODEL.NAME resnet18_nl,
        VI_TRAIN.IMG_SIZE "[64, 32]", MODEL.PRETRAIN_PATH resnet50-19c8e357.pth, DATASETS.TRIALS "[2]")

Writes the reference's best file (``sysu_agw_p4_n8_lr_0.1_seed_0_best.t``, RegDB ``..._trial_<t>_best.t``),
which ``protect_image.py --reid_ckpt_path`` reads (MODEL.FORMAT auto -> agw_vi, the same MODEL.NAME and
INPUT.IMG_SIZE), ``results.json`` and a checkpoint after every epoch; rerunning the same command on the
same --output resumes. See ``engine.train.cross_modality`` for the recipe.
"""
import sys

from configs.cli import Flag, FlagTable, default_argument_parser, default_setup

PROG = "train_cross_modality.py"
# Flags left unset keep the config's value.
FLAGS = FlagTable((
    Flag("dataset", "DATASETS.NAMES", str, "sysu_mm01 | regdb [{key}]"),
    Flag("root", "DATASETS.ROOT_DIR", str, "data set root [{key}]"),
    Flag("output", "OUTPUT_DIR", str, "run folder (rerun on it to resume; empty: log/<dataset>_train_vi) [{key}]"),
    Flag("max_epochs", "VI_TRAIN.MAX_EPOCHS", int, "epochs [81, the reference's 0..80] [{key}]"),
    Flag("device", "MODEL.DEVICE", str, "auto | cpu | cuda | cuda:N [{key}]"),
    Flag("num_workers", "DATALOADER.NUM_WORKERS", int, "image-loading worker processes [{key}]"),
))
FLAG_OF_KEY = FLAGS.flag_of_key


def _own_options(parser):
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (one line per epoch only)")


def build_parser():
    return default_argument_parser(__doc__.splitlines()[0], FLAGS, _own_options, prog=PROG, settings_title=None,
                                   config_help="yacs YAML file merged over configs/defaults.py")


def main(argv=None):
    from utils.errors import report_error

    parser = build_parser()
    parser.error = lambda message: sys.exit(report_error(PROG, message))
    args = parser.parse_args(argv)
    from engine.train.cross_modality import TrainOptions, train_cross_modality, validate_vi_train_config
    from utils.cli import run_command

    def work(state):
        cfg, _ = default_setup(parser, args, FLAGS, "train_vi")
        validate_vi_train_config(cfg, FLAG_OF_KEY)
        state.output = cfg.OUTPUT_DIR
        train_cross_modality(cfg, TrainOptions(show_progress=False if args.no_progress else None))

    return run_command(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
