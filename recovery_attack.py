"""Recovery attack on the pairs saved by ``protect_image.py --save_image_npy``.

    python recovery_attack.py --npy_path <protect output> [--attacker both] [KEY VALUE ...]

Flags of the reference script (--npy_path, --total_epochs, --lr, --generator, --optimizer, --gpus)
and --device, --num_workers and a single --attacker map onto config keys (a ``configs.cli`` flag
table, placed flag by flag in this command's groups) and override both --config_file and the
trailing yacs ``KEY VALUE`` overrides. The reference's --initial_lr and
--debug are accepted and have no effect, there as here (a note on stderr says so).

Arguments are parsed before torch is imported, so ``--help`` is quick; its defaults are read from
configs/defaults.py. Bad input (a flag, a config key, a pair file, a conflicting checkpoint, an
unwritable output folder) ends with one line on stderr and exit status 2, keeping what was
already computed.
"""
import argparse
import re
import sys

from configs import load_config, set_values
from configs.cli import Flag, FlagTable, OneLineParser, default_setup
from configs.defaults import get_default_config
from utils.cli import run_command
from utils.cpus import available_cpus
from utils.errors import ConfigError

PROG = "recovery_attack.py"
# engine.attack.settings.ATTACKERS and modeling.generators.GENERATORS, named here so that --help does not
# import torch (tests/attack/test_attack.py checks that the lists agree).
ATTACKERS = ("reference", "strong", "identity", "inversion")
# Groups of attackers one --attacker value names.
ATTACKER_GROUPS = {"both": ("reference", "strong"), "all": ATTACKERS}
ATTACKER_CHOICES = ATTACKERS + tuple(ATTACKER_GROUPS)
GENERATOR_NAMES = ("resnet_6blocks", "resnet_9blocks", "unet_128", "unet_256")
OPTIMIZER_NAMES = ("adam", "sgd")
# The flags that set one config key each (configs.cli); --gpus and --attacker set theirs in extra_values.
FLAGS = FlagTable((
    Flag("total_epochs", "ATTACK.TOTAL_EPOCHS", int, "training epochs; default: {default} ({key})"),
    Flag("lr", "ATTACK.LR", float, "learning rate; default: {default} ({key})"),
    Flag("generator", "ATTACK.GENERATOR", str, "default: {default} ({key})", GENERATOR_NAMES),
    Flag("optimizer", "ATTACK.OPTIMIZER", str, "default: {default} ({key}); the reference script parses it but "
         "always uses Adam", OPTIMIZER_NAMES),
    Flag("device", "MODEL.DEVICE", str, "auto (CUDA when available), cpu, cuda or cuda:<index>; "
         "default: {default} ({key})"),
    Flag("num_workers", "DATALOADER.NUM_WORKERS", int, "data-loader worker processes; default: {default} ({key}), "
         f"always capped at the CPUs this process may use ({available_cpus()} here)"),
    Flag("threads", "SYSTEM.THREADS", int, "torch CPU threads; default: {default} ({key}): OMP_NUM_THREADS when "
         "set, else the CPUs this process may use"),
))
# Flags of the reference script that it parses and never reads.
NO_EFFECT_NOTES = {
    "initial_lr": "--initial_lr has no effect: the reference script parses it but never uses it "
                  "(its optimizer takes --lr); use --lr (ATTACK.LR) to set the learning rate",
    "debug": "--debug has no effect: the reference script parses it but never uses it",
}


def build_parser():
    d = get_default_config()
    parser = OneLineParser(
        prog=PROG, description="Train a generator to undo a protection (or invert features white-box) and "
        "score what it recovers: PSNR, SSIM, MSE of protected and recovered test images vs the originals, "
        "LPIPS, and identity leakage (recovered queries searched against the original gallery).",
        epilog="Results: attack_results.json and attack_results.md (with the privacy table), log_recovery.txt, "
        "Generator_weight.pth (reference) / Generator_weight_<attacker>.pth and *_best.pth, rec_images/<attacker>/ "
        "grids, attack_config.yaml, and attack_ckpt/<attacker>/checkpoint_<epoch>.pt (the last "
        "epoch only): rerunning the same command resumes from it.")
    parser.add_argument("--npy_path", required=True,
                        help="protect_image.py output folder, or its img_npy folder (required)")
    parser.add_argument("--config_file", default="",
                        help="YAML config merged over configs/defaults.py; default: none")
    parser.add_argument("--output", default="",
                        help="folder for results, logs and checkpoints; default: the run folder "
                             "holding img_npy")
    training = parser.add_argument_group("training (reference flags)")
    for name in ("total_epochs", "lr", "generator", "optimizer"):
        FLAGS.add_flag(training, name, d)
    training.add_argument("--gpus",
                          help="GPU indices such as 0 or 0,1: the attack trains on the first one "
                               "(MODEL.DEVICE cuda:<first>); default: not set, see --device. "
                               "The reference script parses it but always uses cuda:0")
    training.add_argument("--initial_lr", type=float,
                          help="no effect: the reference script parses it (default 0.1) but "
                               "never uses it; --lr sets the learning rate")
    training.add_argument("--debug", action="store_true",
                          help="no effect: the reference script parses it but never uses it")
    ours = parser.add_argument_group("this toolkit")
    ours.add_argument("--attacker", choices=ATTACKER_CHOICES,
                      help="reference (Tanh, L1 to normalised originals: the paper), strong (no "
                           "Tanh, L1 to pixels), identity (strong plus a Re-ID feature loss, "
                           "ATTACK.IDENTITY_*), inversion (white-box feature inversion through the "
                           "authorization model, no training, ATTACK.INVERSION_*), both (reference and "
                           "strong) or all; "
                           f"default: {d.ATTACK.MODE} (ATTACK.MODE)")
    ours.add_argument("--reference_order", action="store_true",
                      help="visit saved batches in the reference's sorted file order "
                           "(10 before 2), unshuffled; default: shuffled per epoch "
                           f"(ATTACK.SHUFFLE {d.ATTACK.SHUFFLE}, ATTACK.SEED {d.ATTACK.SEED})")
    for name in ("device", "num_workers", "threads"):
        FLAGS.add_flag(ours, name, d)
    ours.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. ATTACK.NGF 32 "
                             "(flags win over them)")
    return parser


def gpu_device(gpus):
    """'cuda:<first index>' of a --gpus value such as '0', '1,2' or '[0, 1]', and all indices."""
    indices = [int(index) for index in re.findall(r"\d+", gpus)]
    if not indices or re.sub(r"[\d,\s\[\]]", "", gpus):
        raise ConfigError(f"--gpus: expected GPU indices such as 0 or 0,1, got {gpus!r}")
    return f"cuda:{indices[0]}", indices


def extra_values(args):
    """{config key: value} of the options that are not one flag per key: --gpus (MODEL.DEVICE) and a
    single --attacker (ATTACK.MODE); set after the flags."""
    values = {}
    if args.gpus is not None:
        if args.device is not None:
            raise ConfigError("--gpus and --device both choose the device; give only one of them")
        values["MODEL.DEVICE"] = gpu_device(args.gpus)[0]
    if args.attacker in ATTACKERS:
        values["ATTACK.MODE"] = args.attacker
    return values


def attack_config(config_file, opts, values, flag_of_key=None):
    """Defaults < ``config_file`` < ``KEY VALUE`` overrides < flag values, frozen (configs.cli's build step)."""
    cfg = load_config(config_file, opts)
    cfg.defrost()
    set_values(cfg, values)
    cfg.freeze()
    return cfg


def notes(args):
    """One-line notes for flags accepted from the reference that do nothing or less than asked."""
    lines = [note for flag, note in NO_EFFECT_NOTES.items()
             if getattr(args, flag) not in (None, False)]
    if args.gpus is not None:
        device, indices = gpu_device(args.gpus)
        if len(indices) > 1:
            lines.append(f"--gpus {args.gpus}: the attack trains on one device, {device}")
    return lines


def check_device(spec, flag):
    """torch.device of MODEL.DEVICE, refused (naming ``flag``) when that device does not exist."""
    import torch

    from modeling.build import resolve_device

    if flag == "--gpus" and not torch.cuda.is_available():
        raise ConfigError(f"--gpus: CUDA is not available on this machine, so there is no "
                          f"{spec}; leave --gpus out (or pass --device cpu) to run on the CPU")
    device = resolve_device(spec)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"{flag}: there is no {spec} on this machine; expected an index "
                              f"below {count} (the CUDA devices it has)")
    return device


def device_flag(args):
    """What chose the device, as a refusal names it."""
    if args.gpus is not None:
        return "--gpus"
    return "--device" if args.device is not None else "MODEL.DEVICE"


def run(parser, args):
    """Everything after parsing: notes, config, device, then the attack (heavy imports here); the attack
    checks the attackers, settings and pairs once."""
    for line in notes(args):
        print(f"{PROG}: note: {line}", file=sys.stderr)
    cfg, _ = default_setup(parser, args, FLAGS, "attack", extra_values(args), build=attack_config)

    from engine.attack.run import run_recovery_attack
    from utils.cpus import configure_threads

    configure_threads(cfg.SYSTEM.THREADS)
    device = check_device(cfg.MODEL.DEVICE, device_flag(args))
    attacker = args.attacker or cfg.ATTACK.MODE
    run_recovery_attack(cfg, args.npy_path, list(ATTACKER_GROUPS.get(attacker, (attacker,))), device,
                        output=args.output or None, reference_order=args.reference_order,
                        show_progress=not args.no_progress)
    return 0


def main(argv=None):
    def work(state):
        parser = build_parser()
        args = parser.parse_args(argv)
        from data.img_npy import run_dir_of

        state.output = args.output or run_dir_of(args.npy_path)  # named by a Ctrl-C line once it exists
        return run(parser, args)

    return run_command(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
