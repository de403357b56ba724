"""Sweep any config keys: each grid point a normal protection run (resumable), its attacks, one table and plots.

    python -m tools.sweep --output log/sweeps/epsilon --grid PIXELFADE.EPSILON=0.01,0.03,0.1 \
        [--grid PIXELFADE.MAX_ITER=50,100] [--config_file F] [--reid_ckpt_path P | --random_init] \
        [--root DIR] [--attackers reference,strong] [--device auto] [--no_progress] [KEY VALUE ...]

Writes ``<output>/<point>/`` (one protect_image.py folder per point), ``sweep.md``, ``sweep.json``,
``sweep_<key>.png`` per swept key and ``sweep_tradeoff.png``. Every point's settings are checked
before anything is written; rerunning the same command resumes.
"""
import argparse
import sys


def attacker_list(text):
    return () if text == "none" else tuple(name.strip() for name in text.split(",") if name.strip())


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the sweep folder")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and its values (repeat for a grid over several keys)")
    parser.add_argument("--config_file", default="", help="YAML merged over configs/defaults.py")
    parser.add_argument("--reid_ckpt_path", default="", help="authorization model (TEST.WEIGHT)")
    parser.add_argument("--random_init", action="store_true", help="no checkpoint: an untrained MODEL.NAME")
    parser.add_argument("--root", default="", help="data set root (DATASETS.ROOT_DIR)")
    parser.add_argument("--dataset", default="", help="DATASETS.NAMES")
    parser.add_argument("--attackers", default="reference", type=attacker_list,
                        help="comma-separated recovery attackers per run (reference, strong, identity, "
                             "inversion); 'none' for no attack")
    parser.add_argument("--device", default="auto", help="MODEL.DEVICE")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides for every point")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from experiments.points import Base
    from experiments.sweep import parse_grid, run_sweep
    from utils.errors import PixelFadeError, report_error

    opts = ["MODEL.DEVICE", args.device, "PIXELFADE.SAVE_IMAGE_NPY", str(bool(args.attackers))]
    for key, value in (("TEST.WEIGHT", args.reid_ckpt_path), ("DATASETS.ROOT_DIR", args.root),
                       ("DATASETS.NAMES", args.dataset)):
        if value:
            opts += [key, value]
    try:
        grid = parse_grid(args.grid)
        base = Base(args.config_file, tuple(opts + list(args.opts)), args.random_init, args.attackers,
                    not args.no_progress)
        run_sweep(base, grid, args.output)
    except PixelFadeError as err:
        return report_error("sweep", err)
    print(f"sweep: table and figures in {args.output} (sweep.md, sweep.json, sweep_*.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
