"""Train a CLIP text-image Re-ID model (IRRA's SDM + ID losses) on a text data set's train split.

    python tools/train_text_image.py --dataset rstpreid --root DIR --output DIR [--arch clip_tiny | ViT-B-16]
        [--image_size H W] [--epochs N] [--batch_size N] [--lr LR] [--init CLIP_OR_IRRA_FILE] [--device D]

Writes ``clip_model.pth`` (``MODEL.FORMAT clip``, found by ``auto``; pass it to ``protect_image.py`` with the
same ``INPUT.IMG_SIZE``), ``classifier.pth``, ``results.json`` (text-to-image scores on the test split) and a
checkpoint every epoch; rerunning the same command on the same --output resumes. See
``engine.train.text_image`` for the recipe and how it compares with IRRA's. Nothing is downloaded.
"""
import argparse
import sys

PROG = "train_text_image.py"


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="cuhk_pedes | icfg_pedes | rstpreid")
    parser.add_argument("--root", required=True, help="data set root (or the data set's own folder)")
    parser.add_argument("--output", required=True, help="run folder (rerun on it to resume)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs [60, IRRA's]")
    parser.add_argument("--batch_size", type=int, default=128, help="images per batch, one caption each [128]")
    parser.add_argument("--lr", type=float, help="base learning rate [1e-5 (IRRA's) with --init, else 1e-3]")
    parser.add_argument("--temperature", type=float, default=0.02,
                        help="SDM's fixed temperature [0.02, IRRA's]")
    parser.add_argument("--arch", default="clip_tiny", help="clip_tiny | ViT-B-16 (with --init: the file's sizes)")
    parser.add_argument("--image_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"),
                        help="input size, multiples of the patch size 16 [384 128, IRRA's]")
    parser.add_argument("--init", default="", help="start from this CLIP state dict or IRRA checkpoint")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, batches, captions and flips")
    parser.add_argument("--num_workers", type=int, default=0, help="image-loading worker processes [0]")
    parser.add_argument("--eval_period", type=int, default=1, help="evaluate on the test split every N epochs")
    parser.add_argument("--irra_export", action="store_true", help="also write irra_model.pth in IRRA's layout")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (one line per epoch only)")
    return parser


def main(argv=None):
    parser = build_parser()
    from utils.errors import report_error

    parser.error = lambda message: sys.exit(report_error(PROG, message))
    args = parser.parse_args(argv)
    from engine.train.text_image import TextImageSettings, run
    from utils.cli import run_command

    settings = TextImageSettings(
        dataset=args.dataset, root=args.root, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, temperature=args.temperature, arch=args.arch, image_size=tuple(args.image_size), device=args.device,
        seed=args.seed, init=args.init, num_workers=args.num_workers, eval_period=args.eval_period,
        irra_export=args.irra_export, show_progress=False if args.no_progress else None)

    def work(state):
        state.output = settings.output  # named by the Ctrl-C line once the folder exists
        run(settings)

    return run_command(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
