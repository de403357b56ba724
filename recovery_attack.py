"""Recovery attack on the pairs saved by ``protect_image.py --save_image_npy``.

    python recovery_attack.py --npy_path <protect output> [--attacker both] [KEY VALUE ...]

Flags of the reference script (--npy_path, --total_epochs, --lr, --generator, --optimizer), and
--device and a single --attacker, map onto config keys and override both --config_file and the
trailing yacs ``KEY VALUE`` overrides.
"""
import argparse
import sys

from configs import ConfigError, load_config
from data.npy_pairs import SPLITS, find_pairs, resolve_npy_dir
from engine.attack import ATTACKERS, AttackSettings, run_recovery_attack
from modeling.build import resolve_device
from modeling.generators import GENERATORS

ATTACKER_CHOICES = ATTACKERS + ("both",)
FLAG_KEYS = {"total_epochs": "ATTACK.TOTAL_EPOCHS", "lr": "ATTACK.LR",
             "generator": "ATTACK.GENERATOR", "optimizer": "ATTACK.OPTIMIZER",
             "device": "MODEL.DEVICE"}


def build_parser():
    parser = argparse.ArgumentParser(description="Train a generator to undo a protection and "
                                                 "score what it recovers.")
    parser.add_argument("--npy_path", required=True,
                        help="protect_image.py output folder, or its img_npy folder")
    parser.add_argument("--config_file", default="", help="YAML config merged over the defaults")
    parser.add_argument("--output", default="",
                        help="folder for results, logs and checkpoints (default: the run folder "
                             "holding img_npy)")
    parser.add_argument("--total_epochs", type=int, help="ATTACK.TOTAL_EPOCHS")
    parser.add_argument("--lr", type=float, help="ATTACK.LR")
    parser.add_argument("--generator", choices=sorted(GENERATORS), help="ATTACK.GENERATOR")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), help="ATTACK.OPTIMIZER")
    parser.add_argument("--attacker", choices=ATTACKER_CHOICES,
                        help="reference (Tanh, normalised targets), strong (pixel targets) or "
                             "both (default: ATTACK.MODE)")
    parser.add_argument("--reference_order", action="store_true",
                        help="visit saved batches in the reference's sorted file order "
                             "(10 before 2), unshuffled")
    parser.add_argument("--device", help="MODEL.DEVICE: auto (CUDA when available), cpu, cuda "
                                          "or cuda:<index>")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. ATTACK.NGF 32")
    return parser


def flag_overrides(args):
    """``KEY VALUE`` pairs for the flags given, appended last so they win over the config."""
    overrides = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides += [key, repr(value) if isinstance(value, str) else str(value)]
    if args.attacker in ATTACKERS:
        overrides += ["ATTACK.MODE", repr(args.attacker)]
    return overrides


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, list(args.opts) + flag_overrides(args))
        device = resolve_device(cfg.MODEL.DEVICE)
        AttackSettings.from_config(cfg)
        attacker = args.attacker or cfg.ATTACK.MODE
        if attacker not in ATTACKER_CHOICES:
            raise ValueError(f"ATTACK.MODE must be one of {ATTACKERS}, got '{attacker}'")
        npy_dir = resolve_npy_dir(args.npy_path)
        for split in SPLITS:
            find_pairs(npy_dir, split)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    attackers = list(ATTACKERS) if attacker == "both" else [attacker]
    run_recovery_attack(cfg, npy_dir, attackers, device, output=args.output or None,
                        reference_order=args.reference_order, show_progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
