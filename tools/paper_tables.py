"""The paper's tables: table_methods, table_ablation, table_params, table_backbones (Markdown, JSON, PNG).

    python -m tools.paper_tables table_methods [table_ablation ...] --output log/tables \
        --dataset market1501 --root ./datasets --ckpt_dir ./ckpt [--backbone NAME=CKPT ...] \
        [--attackers reference,strong] [--device auto] [KEY VALUE ...]
    python -m tools.paper_tables all --small --output log/tables_small     # synthetic set, CPU, minutes

``--small`` runs on the demo's synthetic set with its small trained model (trained once under
``<output>/small_model``). Runs go to ``<output>/runs/<point>``, one protect_image.py folder each,
so a rerun of the same command resumes; every table's settings are checked before anything runs.
The work is in experiments/table_runs.py.
"""
import argparse
import os
import sys

from utils.cli import attacker_list, parse_with_trailing_pairs, run_command
from utils.errors import ConfigError

TABLE_NAMES = ("table_methods", "table_ablation", "table_params", "table_backbones")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", choices=[*TABLE_NAMES, "all"])
    parser.add_argument("--output", default="log/tables")
    parser.add_argument("--small", action="store_true", help="the synthetic set with the demo's small trained model")
    parser.add_argument("--dataset", default="market1501")
    parser.add_argument("--root", default="./datasets", help="data set root (DATA_ROOT)")
    parser.add_argument("--ckpt_dir", default="./ckpt", help="<dataset>_resnet50_nl_model_120.pth (CKPT_DIR)")
    parser.add_argument("--backbone", action="append", default=[], metavar="NAME=CKPT",
                        help="table_backbones: an agw-family MODEL.NAME and its checkpoint (repeat)")
    parser.add_argument("--attackers", default="reference,strong", type=attacker_list,
                        help="comma-separated recovery attackers per run (reference, strong, identity, "
                             "inversion); 'none' for no attack")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def setting_of(args, opts):
    """The runs' data set and model: the paper's, or the demo's synthetic set with --small."""
    from experiments.table_runs import paper_setting, small_setting

    if len(opts) % 2:
        raise ConfigError(f"trailing overrides must be KEY VALUE pairs; got {opts}")
    if args.small:
        device = "cpu" if args.device == "auto" else args.device
        return small_setting(os.path.join(args.output, "small_model"), device, attackers=args.attackers,
                             opts=tuple(opts), show_progress=not args.no_progress)
    return paper_setting(args.dataset, args.root, args.ckpt_dir, args.device, args.attackers,
                         tuple(args.backbone), tuple(opts), show_progress=not args.no_progress)


def main(argv=None):
    args, opts = parse_with_trailing_pairs(build_parser(), argv)  # KEY VALUE overrides for every run
    names = list(TABLE_NAMES) if "all" in args.tables else list(dict.fromkeys(args.tables))

    def work(state):
        from experiments.table_runs import run_tables

        setting = setting_of(args, opts)
        state.output = args.output
        run_tables(setting, args.output, names)
        print(f"paper_tables: {', '.join(names)} written to {args.output} (<table>.md, <table>.json, <table>_*.png)")

    return run_command("paper_tables", work)


if __name__ == "__main__":
    sys.exit(main())
