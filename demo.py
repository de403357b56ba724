"""The demo: synthetic pedestrians, an AGW MobileNetV2 it trains itself, PixelFade at the paper's
settings vs blur, the recovery attack, a figure.

    python demo.py --output log/demo        (or: bash run.sh demo)

Rerunning on the same --output reuses the data and the trained model and resumes finished work.
The work itself is in experiments/demo.py.
"""
import sys

from experiments.demo import DEFAULT_SCALE, SMALL_SCALE, run_demo
from utils.cli import demo_argument_parser, run_command
from utils.cpus import configure_threads


def main(argv=None):
    args = demo_argument_parser(
        "PixelFade demo on generated data (CPU friendly)", "log/demo",
        threads_help="torch CPU threads (SYSTEM.THREADS); 0: OMP_NUM_THREADS when set, else the usable CPUs",
    ).parse_args(argv)

    def work(state):
        configure_threads(args.threads, key="--threads")
        state.output = args.output
        summary = run_demo(args.output, SMALL_SCALE if args.small else DEFAULT_SCALE, args.device,
                           show_progress=not args.no_progress)
        print(summary["report"])

    return run_command("demo.py", work)


if __name__ == "__main__":
    sys.exit(main())
