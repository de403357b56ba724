"""Rewrite a Re-ID checkpoint (any accepted layout, pickled AGW modules included) as a plain
state-dict file that ``torch.load(weights_only=True)`` reads.

    python tools/convert_checkpoint.py SRC DST
"""
import argparse
import sys

from modeling.checkpoint import CheckpointError, convert_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint to read (never executed)")
    parser.add_argument("dst", help="plain state-dict file to write (classifier kept)")
    args = parser.parse_args(argv)
    try:
        state = convert_checkpoint(args.src, args.dst)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(state)} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
