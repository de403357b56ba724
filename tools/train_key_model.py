"""Train AVIH's key model: the recovery attack's 'strong' resnet_9blocks generator on a run's pairs.

    python -m tools.train_key_model --npy_path <protect_image.py --save_image_npy run> [--output DIR]
        [recovery_attack.py flags] [KEY VALUE ...]

AVIH's release ships no key-model recipe (SPEC-2 15.2). Ours for pedestrians: the map protected ->
original learnt on the original/protected train pairs of another method's run (a PixelFade run by
default), with the recovery attack's engine: L1 to the original pixels, no output activation,
ATTACK.NGF channels. It writes ``Generator_weight_strong.pth``: pass it as AVIH.KEY_MODEL, with
AVIH.KEY_NGF equal to ATTACK.NGF. Rerunning resumes, as recovery_attack.py does.
"""
import sys

import recovery_attack

FIXED_FLAGS = ("--attacker", "--generator")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    fixed = [item for item in argv if item.split("=", 1)[0] in FIXED_FLAGS]
    if fixed:
        print(f"train_key_model: error: {fixed[0]} is fixed here (the key model is the strong attacker's "
              "resnet_9blocks generator); expected it left out", file=sys.stderr)
        return 2
    return recovery_attack.main(["--attacker", "strong", "--generator", "resnet_9blocks", *argv])


if __name__ == "__main__":
    sys.exit(main())
