"""Protect Re-ID images with PixelFade (or a baseline method) and score retrieval on them.

    python protect_image.py --config_file configs/AGW_baseline_market1501.yml \
        --reid_ckpt_path ckpt/market1501_resnet50_nl_model_120.pth \
        --output log/market1501_protect --save_image_npy [KEY VALUE ...]

Rerunning the same command on the same --output resumes after the last finished batch.
Several processes: ``--nproc_per_node N`` (spawned here) or ``torchrun --nproc_per_node=N protect_image.py ...``.
Arguments are parsed before torch is imported, so ``--help`` and argument errors are instant.
"""

import sys

from configs.cli import Flag, FlagTable, add_launch_options, default_argument_parser, default_setup

METHODS = ("pixelfade", "avih", "blur", "mosaic", "noise", "mosaic24_topleft", "blur12_pil", "noise0.5_uint8")
# Flags left unset keep the config's value.
FLAGS = FlagTable((
    Flag("reid_ckpt_path", "TEST.WEIGHT", str, "authorization Re-ID checkpoint (any format of ckpt/README.md); "
         "sysu_mm01/regdb: {trial} = one per trial"),
    Flag("output", "OUTPUT_DIR", str, "output folder (empty: log/<dataset>_protect)"),
    Flag("dataset", "DATASETS.NAMES", str, "market1501 | cuhk03 | msmt17 | sysu_mm01 | regdb | image_folder"),
    Flag("root", "DATASETS.ROOT_DIR", str, "data set root (env PIXELFADE_DATA)"),
    Flag("batch_size", "PIXELFADE.BATCH_SIZE", int, "images protected together"),
    Flag("max_iter", "PIXELFADE.MAX_ITER", int, "optimisation steps per batch"),
    Flag("fade_num_iter", "PIXELFADE.FADE_NUM_ITER", int, "K, number of replacement stages"),
    Flag("warmup_iter", "PIXELFADE.WARMUP_ITER", int, "steps that always replace"),
    Flag("momentum_w", "PIXELFADE.MOMENTUM", float, "gradient momentum"),
    Flag("beta", "PIXELFADE.BETA", float, "step size while the constraint holds"),
    Flag("beta_temp", "PIXELFADE.BETA_TEMP", float, "step size while it does not (0.02 for CUHK03)"),
    Flag("epsilon", "PIXELFADE.EPSILON", float, "bound on the feature MSE"),
    Flag("seed", "PIXELFADE.SEED", int, "random stream of masks and noise"),
    Flag("mode", "PIXELFADE.MODE", str, "batch-level (reference) or per-image constraint and seeds",
         ("reference", "per_image")),
    Flag("precision", "PIXELFADE.PRECISION", str, "autocast of the model in the loop (opt-in speed; changes numbers)",
         ("none", "bf16", "fp16")),
    Flag("channels_last", "PIXELFADE.CHANNELS_LAST", bool, "channels_last memory layout (opt-in speed; changes numbers)"),
    Flag("train_order", "PIXELFADE.TRAIN_ORDER", str, "train split with --save_image_npy: the reference's PK batches "
         "with random flips, or every image once", ("identity_balanced", "every_image")),
    Flag("method", "PIXELFADE.METHOD", str, "protection method (engine/methods/; avih needs AVIH.KEY_MODEL)", METHODS),
    Flag("blur_sigma", "PIXELFADE.BLUR_SIGMA", float, "blur strength"),
    Flag("mosaic_block", "PIXELFADE.MOSAIC_BLOCK", int, "mosaic cell size in pixels"),
    Flag("noise_std", "PIXELFADE.NOISE_STD", float, "additive noise std in normalised units"),
    Flag("device", "MODEL.DEVICE", str, "auto | cpu | cuda | cuda:N"),
    Flag("num_workers", "DATALOADER.NUM_WORKERS", int, "image-loading worker processes (capped at the usable CPUs)"),
    Flag("threads", "SYSTEM.THREADS", int, "torch CPU threads (0: OMP_NUM_THREADS, else the usable CPUs)"),
    Flag("skip_unreadable", "DATASETS.SKIP_UNREADABLE", bool, "leave unreadable images out (listed in results)"),
    Flag("save_image_npy", "PIXELFADE.SAVE_IMAGE_NPY", help="also protect the train split; save original/protected "
         "pairs in img_npy/ (PIXELFADE.SAVE_IMAGE_NPY)", switch=True),
    Flag("save_png", "PIXELFADE.SAVE_PNG", help="store protected images as 8-bit PNG and score Re-ID on them too "
         "(PIXELFADE.SAVE_PNG)", switch=True),
))
FLAG_OF_KEY = FLAGS.flag_of_key


def _own_options(parser):
    parser.add_argument("--random_init", action="store_true",
                        help="no checkpoint: an untrained AGW seeded by MODEL.INIT_SEED (demo only)")
    parser.add_argument("--image_folder", help="protect a plain folder of images (no labels, no metrics)")
    FLAGS.add_flag(parser, "save_image_npy")
    FLAGS.add_flag(parser, "save_png")
    parser.add_argument("--num_iter", type=int, help="accepted for the reference's commands; unused there and here")
    add_launch_options(parser)


def build_parser():
    return default_argument_parser("PixelFade: protect Re-ID images", FLAGS, _own_options)


def folder_values(args):
    """--image_folder sets two keys: the data set kind and its root."""
    return {"DATASETS.NAMES": "image_folder", "DATASETS.ROOT_DIR": args.image_folder} if args.image_folder else {}


def flag_values(args):
    """{config key: value} for every flag given; they win over --config_file and KEY VALUE pairs."""
    return {**FLAGS.values(args), **folder_values(args)}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.protect.run import ProtectOptions, build_protect_config, run
    from utils.cli import check_nproc, run_command
    from utils.cpus import configure_threads

    def work(state):
        check_nproc(args.nproc_per_node)
        if args.num_iter is not None:
            print("note: --num_iter is unused (as in the reference code); --max_iter sets the steps", file=sys.stderr)
        cfg, _ = default_setup(parser, args, FLAGS, "protect", folder_values(args), build=build_protect_config)
        configure_threads(cfg.SYSTEM.THREADS)
        state.output = cfg.OUTPUT_DIR
        run(cfg, ProtectOptions(random_init=args.random_init, show_progress=not args.no_progress),
            args.nproc_per_node, args.backend)

    return run_command("protect_image.py", work)


if __name__ == "__main__":
    sys.exit(main())
