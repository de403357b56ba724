"""Write a small synthetic Re-ID data set (Market-1501, CUHK03, MSMT17, SYSU-MM01, RegDB or text-to-image layout).

For tests and demos without the real data.

Example: python tools/make_synthetic_data.py --root datasets --dataset market1501
"""
import argparse
import sys

from data import build_dataset
from data.synthetic import DEFAULTS, make_cuhk03, make_market1501, make_msmt17
from data.synthetic_text import TEXT_DATASETS, make_text_dataset
from data.synthetic_vi import make_regdb, make_sysu_mm01


def _visible_infrared(make):
    """SYSU-MM01 and RegDB fix their cameras (6; one visible and one thermal), so --num_cams is not theirs."""
    def generate(args, sizes):
        options = {key: value for key, value in sizes.items() if key != "num_cams"}
        return make(args.root, **options)
    return generate


# --dataset -> generator(args, sizes) returning the folder written.
GENERATORS = {
    "market1501": lambda args, sizes: make_market1501(args.root, **sizes),
    "cuhk03": lambda args, sizes: make_cuhk03(args.root, **sizes),
    "msmt17": lambda args, sizes: make_msmt17(args.root, version=args.msmt_version, **sizes),
    "sysu_mm01": _visible_infrared(make_sysu_mm01),
    "regdb": _visible_infrared(make_regdb),
}
GENERATORS.update({name: (lambda args, sizes, name=name: make_text_dataset(name, args.root, **sizes))
                   for name in TEXT_DATASETS})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder that will hold the data set folder")
    parser.add_argument("--dataset", choices=tuple(GENERATORS), default="market1501")
    parser.add_argument("--num_ids", type=int, default=DEFAULTS["num_ids"],
                        help="identities; the first half train, the rest test (regdb: even, split per trial)")
    parser.add_argument("--num_cams", type=int, default=DEFAULTS["num_cams"],
                        help="cameras (cuhk03: even, two views per camera pair; not for sysu_mm01, regdb)")
    parser.add_argument("--images_per_id_cam", type=int, default=DEFAULTS["images_per_id_cam"],
                        help="images of each identity per camera (>= 2; cuhk03: <= 5)")
    parser.add_argument("--height", type=int, default=DEFAULTS["height"])
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--msmt_version", type=int, choices=(1, 2), default=1)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sizes = {"num_ids": args.num_ids, "num_cams": args.num_cams, "images_per_id_cam": args.images_per_id_cam,
             "height": args.height, "width": args.width, "seed": args.seed}
    try:
        folder = GENERATORS[args.dataset](args, sizes)
    except (ValueError, FileExistsError) as err:
        sys.exit(f"make_synthetic_data: {err}")
    print(f"wrote {folder}")
    print(build_dataset(args.dataset, folder).summary())
    return folder


if __name__ == "__main__":
    main()
