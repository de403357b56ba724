"""The demo: synthetic pedestrians, an AGW MobileNetV2 it trains itself, PixelFade at the paper's
settings vs blur, the recovery attack, a figure.

    python demo.py --output log/demo        (or: bash run.sh demo)

Rerunning on the same --output reuses the data and the trained model and resumes finished work.
The work itself is in tools/demo.py.
"""
import argparse
import sys

from tools.demo import DEFAULT_SCALE, SMALL_SCALE, run_demo
from utils.cpus import configure_threads
from utils.errors import ConfigError, report_error


def main(argv=None):
    parser = argparse.ArgumentParser(description="PixelFade demo on generated data (CPU friendly)")
    parser.add_argument("--output", default="log/demo", help="output directory")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--small", action="store_true", help="the test suite's smaller, faster scale")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (SYSTEM.THREADS); 0: OMP_NUM_THREADS when set, else the usable CPUs")
    args = parser.parse_args(argv)
    try:
        configure_threads(args.threads, key="--threads")
    except ConfigError as err:
        return report_error("demo.py", err)
    summary = run_demo(args.output, SMALL_SCALE if args.small else DEFAULT_SCALE, args.device,
                       show_progress=not args.no_progress)
    print(summary["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
