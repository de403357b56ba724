"""The paper's tables: table_methods, table_ablation, table_params, table_backbones (Markdown, JSON, PNG).

    python -m tools.paper_tables table_methods [table_ablation ...] --output log/tables \
        --dataset market1501 --root ./datasets --ckpt_dir ./ckpt [--backbone NAME=CKPT ...] \
        [--attackers reference,strong] [--device auto] [KEY VALUE ...]
    python -m tools.paper_tables all --small --output log/tables_small     # synthetic set, CPU, minutes

``--small`` runs on the demo's synthetic set with its small trained model (trained once under
``<output>/small_model``). Runs go to ``<output>/runs/<point>``, one protect_image.py folder each,
so a rerun of the same command resumes; every table's settings are checked before anything runs.
"""
import argparse
import sys

TABLE_NAMES = ("table_methods", "table_ablation", "table_params", "table_backbones")


def attacker_list(text):
    return () if text == "none" else tuple(name.strip() for name in text.split(",") if name.strip())


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


def main(argv=None):
    parser = build_parser()
    # Trailing KEY VALUE overrides for every run come after the flags (a REMAINDER would swallow the flags).
    args, opts = parser.parse_known_args(argv)
    flags = [item for item in opts if item.startswith("--") or (item[:1] == "-" and item[1:2].isalpha())]
    if flags:
        parser.error(f"unrecognised arguments: {' '.join(flags)}")
    import os

    from experiments.paper_tables import paper_setting, run_tables, small_setting
    from utils.errors import PixelFadeError, report_error

    names = list(TABLE_NAMES) if "all" in args.tables else list(dict.fromkeys(args.tables))
    try:
        if len(opts) % 2:
            raise PixelFadeError(f"trailing overrides must be KEY VALUE pairs; got {opts}")
        if args.small:
            device = "cpu" if args.device == "auto" else args.device
            setting = small_setting(os.path.join(args.output, "small_model"), device, attackers=args.attackers,
                                    opts=tuple(opts), show_progress=not args.no_progress)
        else:
            setting = paper_setting(args.dataset, args.root, args.ckpt_dir, args.device, args.attackers,
                                    tuple(args.backbone), tuple(opts), show_progress=not args.no_progress)
        run_tables(setting, args.output, names)
    except PixelFadeError as err:
        return report_error("paper_tables", err)
    print(f"paper_tables: {', '.join(names)} written to {args.output} (<table>.md, <table>.json, <table>_*.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
