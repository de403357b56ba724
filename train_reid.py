"""Train an AGW authorization Re-ID model with the ReID-Survey recipe (README, "Training an authorization model").

    python train_reid.py --config_file configs/AGW_baseline_market1501.yml --output log/train_market1501 \
        MODEL.PRETRAIN_PATH ckpt/resnet50-19c8e357.pth MODEL.WEIGHT_REGULARIZED_TRIPLET on [KEY VALUE ...]

Writes ``<MODEL.NAME>_model_<epoch>.pth`` (a plain state dict that ``protect_image.py
--reid_ckpt_path`` reads) every SOLVER.CHECKPOINT_PERIOD epochs and at the end, a resumable
``training_checkpoint_<epoch>.pt``, ``results.json`` / ``results.md``, ``training_curves.png``,
``config.yaml`` and ``log.txt``. Rerunning the same command on the same --output resumes after the
last checkpoint. Several processes: ``--nproc_per_node N`` or ``torchrun --nproc_per_node=N train_reid.py ...``.

``--dataset sysu_mm01`` or ``regdb`` trains the cross-modality AGW instead (``engine.train.cross_modality``,
the files of ``tools/train_cross_modality.py``; --max_epochs sets VI_TRAIN.MAX_EPOCHS, one process).
Arguments are parsed before torch is imported, so ``--help`` and argument errors are instant.
"""

import sys

from configs.cli import Flag, FlagTable, add_launch_options, default_argument_parser, default_setup

PROG = "train_reid.py"
# DATASETS.NAMES that train the cross-modality AGW, and the keys its run reads instead of the AGW recipe's.
CROSS_MODALITY = ("sysu_mm01", "regdb")
CROSS_MODALITY_KEYS = {"SOLVER.MAX_EPOCHS": "VI_TRAIN.MAX_EPOCHS"}
# Flags left unset keep the config's value.
FLAGS = FlagTable((
    Flag("output", "OUTPUT_DIR", str, "output folder (empty: log/<dataset>_train, log/<dataset>_train_vi)"),
    Flag("root", "DATASETS.ROOT_DIR", str, "data set root (env PIXELFADE_DATA)"),
    Flag("dataset", "DATASETS.NAMES", str,
         "market1501 | cuhk03 | msmt17; sysu_mm01 | regdb train the cross-modality AGW"),
    Flag("device", "MODEL.DEVICE", str, "auto | cpu | cuda | cuda:N"),
    Flag("max_epochs", "SOLVER.MAX_EPOCHS", int, "training epochs (sysu_mm01 | regdb: VI_TRAIN.MAX_EPOCHS)"),
    Flag("num_workers", "DATALOADER.NUM_WORKERS", int, "image-loading worker processes (capped at the usable CPUs)"),
    Flag("threads", "SYSTEM.THREADS", int, "torch CPU threads (0: OMP_NUM_THREADS, else the usable CPUs)"),
))
FLAG_OF_KEY = FLAGS.flag_of_key
CROSS_MODALITY_FLAG_OF_KEY = {CROSS_MODALITY_KEYS.get(key, key): flag for key, flag in FLAG_OF_KEY.items()}


def build_parser():
    return default_argument_parser("PixelFade: train an AGW authorization Re-ID model", FLAGS, add_launch_options)


def build_train_config(config_file, opts, flag_values, flag_of_key=None):
    """Defaults < --config_file < trailing KEY VALUE overrides < flags, frozen, not yet checked.

    For sysu_mm01 / regdb the flags set the cross-modality keys (--max_epochs: VI_TRAIN.MAX_EPOCHS) and
    an empty OUTPUT_DIR becomes log/<dataset>_train_vi, as tools/train_cross_modality.py makes it.
    """
    from configs import config_with_flags

    cfg = config_with_flags(config_file, opts, flag_values, "train")
    if cfg.DATASETS.NAMES not in CROSS_MODALITY:
        return cfg
    values = {CROSS_MODALITY_KEYS.get(key, key): value for key, value in flag_values.items()}
    return config_with_flags(config_file, opts, values, "train_vi")


def train_agw(cfg, args, state):
    """The AGW recipe: settings checked once, then one process, torchrun's or spawned ones."""
    from engine.train.reid import TrainOptions, run, validate_train_config
    from utils.cpus import configure_threads

    settings = validate_train_config(cfg, FLAG_OF_KEY)
    configure_threads(cfg.SYSTEM.THREADS)
    state.output = cfg.OUTPUT_DIR
    run(settings, TrainOptions(show_progress=not args.no_progress), args.nproc_per_node, args.backend)


def train_cross_modality(cfg, args, state):
    """The cross-modality AGW on SYSU-MM01 or RegDB, in this one process."""
    from engine.train.cross_modality import TrainOptions, train_cross_modality, validate_vi_train_config
    from utils.cpus import configure_threads
    from utils.errors import ConfigError

    if (args.nproc_per_node or 1) > 1:
        raise ConfigError(f"--nproc_per_node must be 1 for DATASETS.NAMES {cfg.DATASETS.NAMES} (the cross-modality "
                          f"AGW trains in one process), got {args.nproc_per_node}")
    validate_vi_train_config(cfg, CROSS_MODALITY_FLAG_OF_KEY)
    configure_threads(cfg.SYSTEM.THREADS)
    state.output = cfg.OUTPUT_DIR
    train_cross_modality(cfg, TrainOptions(show_progress=False if args.no_progress else None))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from utils.cli import check_nproc, run_command

    def work(state):
        check_nproc(args.nproc_per_node)
        cfg, _ = default_setup(parser, args, FLAGS, "train", build=build_train_config)
        if cfg.DATASETS.NAMES in CROSS_MODALITY:
            return train_cross_modality(cfg, args, state)
        return train_agw(cfg, args, state)

    return run_command(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
