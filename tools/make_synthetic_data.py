"""Write a small synthetic Re-ID data set (Market-1501, CUHK03 or MSMT17 layout).

For tests and demos without the real data.

Example: python tools/make_synthetic_data.py --root datasets --dataset market1501
"""
import argparse
import sys

from data import build_dataset
from data.synthetic import DEFAULTS, make_cuhk03, make_market1501, make_msmt17


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder that will hold the data set folder")
    parser.add_argument("--dataset", choices=("market1501", "cuhk03", "msmt17"),
                        default="market1501")
    parser.add_argument("--num_ids", type=int, default=DEFAULTS["num_ids"],
                        help="identities; the first half train, the rest test")
    parser.add_argument("--num_cams", type=int, default=DEFAULTS["num_cams"],
                        help="cameras (cuhk03: even, two views per camera pair)")
    parser.add_argument("--images_per_id_cam", type=int, default=DEFAULTS["images_per_id_cam"],
                        help="images of each identity per camera (>= 2; cuhk03: <= 5)")
    parser.add_argument("--height", type=int, default=DEFAULTS["height"])
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--msmt_version", type=int, choices=(1, 2), default=1)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sizes = dict(num_ids=args.num_ids, num_cams=args.num_cams,
                 images_per_id_cam=args.images_per_id_cam, height=args.height,
                 width=args.width, seed=args.seed)
    try:
        if args.dataset == "market1501":
            folder = make_market1501(args.root, **sizes)
        elif args.dataset == "cuhk03":
            folder = make_cuhk03(args.root, **sizes)
        else:
            folder = make_msmt17(args.root, version=args.msmt_version, **sizes)
    except (ValueError, FileExistsError) as err:
        sys.exit(f"make_synthetic_data: {err}")
    print(f"wrote {folder}")
    print(build_dataset(args.dataset, folder).summary())
    return folder


if __name__ == "__main__":
    main()
