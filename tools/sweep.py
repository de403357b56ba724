"""Sweep any config keys: each grid point a normal protection run (resumable), its attacks, one table and plots.

    python -m tools.sweep --output log/sweeps/epsilon --grid PIXELFADE.EPSILON=0.01,0.03,0.1 \
        [--grid PIXELFADE.MAX_ITER=50,100] [--config_file F] [--reid_ckpt_path P | --random_init] \
        [--root DIR] [--attackers reference,strong] [--device auto] [--no_progress] [KEY VALUE ...]

Writes ``<output>/<point>/`` (one protect_image.py folder per point), ``sweep.md``, ``sweep.json``,
``sweep_<key>.png`` per swept key and ``sweep_tradeoff.png``. Every point's settings are checked
before anything is written; rerunning the same command resumes. The work is in experiments/sweep_grid.py.
"""
import sys

from configs.cli import default_argument_parser
from utils.cli import attacker_list, run_command

# Flags that set a config key of every point when given.
KEY_OF_FLAG = {"reid_ckpt_path": "TEST.WEIGHT", "root": "DATASETS.ROOT_DIR", "dataset": "DATASETS.NAMES"}


def _own_options(parser):
    parser.add_argument("--output", required=True, help="the sweep folder")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and its values (repeat for a grid over several keys)")
    parser.add_argument("--reid_ckpt_path", default="", help="authorization model (TEST.WEIGHT)")
    parser.add_argument("--random_init", action="store_true", help="no checkpoint: an untrained MODEL.NAME")
    parser.add_argument("--root", default="", help="data set root (DATASETS.ROOT_DIR)")
    parser.add_argument("--dataset", default="", help="DATASETS.NAMES")
    parser.add_argument("--attackers", default="reference", type=attacker_list,
                        help="comma-separated recovery attackers per run (reference, strong, identity, "
                             "inversion); 'none' for no attack")
    parser.add_argument("--device", default="auto", help="MODEL.DEVICE")
    parser.add_argument("--no_progress", action="store_true")


def build_parser():
    return default_argument_parser(__doc__.splitlines()[0], add_options=_own_options,
                                   config_help="YAML merged over configs/defaults.py",
                                   opts_help="trailing KEY VALUE config overrides for every point")


def point_opts(args):
    """The ``KEY VALUE`` overrides every point shares: the flags first, the trailing pairs after them."""
    opts = ["MODEL.DEVICE", args.device, "PIXELFADE.SAVE_IMAGE_NPY", str(bool(args.attackers))]
    for flag, key in KEY_OF_FLAG.items():
        if getattr(args, flag):
            opts += [key, getattr(args, flag)]
    return tuple(opts + list(args.opts))


def main(argv=None):
    args = build_parser().parse_args(argv)

    def work(state):
        from experiments.points import Base
        from experiments.sweep_grid import parse_grid, run_sweep

        grid = parse_grid(args.grid)
        state.output = args.output
        run_sweep(Base(args.config_file, point_opts(args), args.random_init, args.attackers, not args.no_progress),
                  grid, args.output)
        print(f"sweep: table and figures in {args.output} (sweep.md, sweep.json, sweep_*.png)")

    return run_command("sweep", work)


if __name__ == "__main__":
    sys.exit(main())
