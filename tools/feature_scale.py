"""Print a model's feature scale, the relative EPSILON equal to an absolute one, and a short trial.

    python tools/feature_scale.py --reid_ckpt_path FILE --image_folder DIR [--num_images 20]
        [--max_iter 20] [--epsilon 0.03] [--epsilon_mode absolute] [KEY VALUE ...]
"""
import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", default="")
    parser.add_argument("--reid_ckpt_path", default="", help="the model (any MODEL.FORMAT); empty with --random_init")
    parser.add_argument("--random_init", action="store_true", help="an untrained model of MODEL.NAME")
    parser.add_argument("--image_folder", required=True, help="images to sample (recursively)")
    parser.add_argument("--num_images", type=int, default=20)
    parser.add_argument("--max_iter", type=int, default=20, help="steps of the trial protection")
    parser.add_argument("--epsilon", type=float, help="PIXELFADE.EPSILON (default: the config's)")
    parser.add_argument("--epsilon_mode", choices=["absolute", "relative"], help="PIXELFADE.EPSILON_MODE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides")
    args = parser.parse_args(argv)

    from configs import load_config
    from data.datasets.image_folder import scan_folder
    from evaluation.feature_scale import feature_scale_report, format_report, sample_batch
    from engine.protect.settings import validate_protect_config
    from modeling import build_authorization_model
    from utils.errors import ConfigError, PixelFadeError, report_error

    try:
        overrides = ["PIXELFADE.MAX_ITER", str(args.max_iter), "MODEL.DEVICE", args.device, "OUTPUT_DIR", "unused",
                     "PIXELFADE.BATCH_SIZE", str(args.num_images)]
        if args.epsilon is not None:
            overrides += ["PIXELFADE.EPSILON", str(args.epsilon)]
        if args.epsilon_mode:
            overrides += ["PIXELFADE.EPSILON_MODE", args.epsilon_mode]
        cfg = load_config(args.config_file, list(args.opts) + overrides)
        validate_protect_config(cfg)
        if not args.reid_ckpt_path and not args.random_init:
            raise ConfigError("pass --reid_ckpt_path, or --random_init for an untrained model")
        paths, _ = scan_folder(args.image_folder)
        if not paths:
            raise ConfigError(f"--image_folder {args.image_folder} holds no images")
        paths = paths[: args.num_images]
        model = build_authorization_model(cfg, args.reid_ckpt_path, args.device)
        report = feature_scale_report(cfg, model, sample_batch(cfg, paths, model_device(model)))
    except PixelFadeError as err:
        return report_error("feature_scale.py", err)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def model_device(model):
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else "cpu"


if __name__ == "__main__":
    sys.exit(main())
