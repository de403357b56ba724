"""Print a model's feature scale, the relative EPSILON equal to an absolute one, and a short trial.

    python tools/feature_scale.py --reid_ckpt_path FILE --image_folder DIR [--num_images 20]
        [--max_iter 20] [--epsilon 0.03] [--epsilon_mode absolute] [KEY VALUE ...]
"""
import json
import sys

from configs.cli import default_argument_parser
from utils.cli import run_command


def _own_options(parser):
    parser.add_argument("--reid_ckpt_path", default="", help="the model (any MODEL.FORMAT); empty with --random_init")
    parser.add_argument("--random_init", action="store_true", help="an untrained model of MODEL.NAME")
    parser.add_argument("--image_folder", required=True, help="images to sample (recursively)")
    parser.add_argument("--num_images", type=int, default=20)
    parser.add_argument("--max_iter", type=int, default=20, help="steps of the trial protection")
    parser.add_argument("--epsilon", type=float, help="PIXELFADE.EPSILON (default: the config's)")
    parser.add_argument("--epsilon_mode", choices=["absolute", "relative"], help="PIXELFADE.EPSILON_MODE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(argv=None):
    args = default_argument_parser(__doc__.splitlines()[0], add_options=_own_options, config_help=None,
                                   opts_help="trailing KEY VALUE config overrides").parse_args(argv)
    return run_command("feature_scale.py", lambda _: print_report(args))


def print_report(args):
    """Validate, sample the images, measure and print (JSON with --json)."""
    from data.datasets.image_folder import scan_folder
    from engine.protect.run import build_protect_config
    from experiments.feature_scale import feature_scale_report, format_report, sample_batch
    from modeling import build_authorization_model
    from utils.errors import ConfigError

    overrides = ["PIXELFADE.MAX_ITER", str(args.max_iter), "MODEL.DEVICE", args.device, "OUTPUT_DIR", "unused",
                 "PIXELFADE.BATCH_SIZE", str(args.num_images)]
    if args.epsilon is not None:
        overrides += ["PIXELFADE.EPSILON", str(args.epsilon)]
    if args.epsilon_mode:
        overrides += ["PIXELFADE.EPSILON_MODE", args.epsilon_mode]
    # As protect_image.py builds it: a format's input defaults (e.g. CLIP's for irra/clip) apply unless set.
    cfg = build_protect_config(args.config_file, list(args.opts) + overrides, {})
    if not args.reid_ckpt_path and not args.random_init:
        raise ConfigError("pass --reid_ckpt_path, or --random_init for an untrained model")
    paths, _ = scan_folder(args.image_folder)
    if not paths:
        raise ConfigError(f"--image_folder {args.image_folder} holds no images")
    paths = paths[: args.num_images]
    model = build_authorization_model(cfg, args.reid_ckpt_path, args.device)
    report = feature_scale_report(cfg, model, sample_batch(cfg, paths, model_device(model)))
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def model_device(model):
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else "cpu"


if __name__ == "__main__":
    sys.exit(main())
