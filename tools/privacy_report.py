"""Compare the privacy of several protection runs: one table (Markdown + JSON) and two figures.

    python -m tools.privacy_report --runs log/privacy/pixelfade log/privacy/blur --output log/privacy/report

Each run is a protect_image.py output folder whose attacks are done (recovery_attack.py --attacker all).
The work is in ``engine.attack.report``.
"""
import argparse
import sys

from utils.cli import run_command

PROG = "privacy_report.py"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="protect run folders, one per method")
    parser.add_argument("--output", required=True, help="folder for privacy_report.md/.json and the figures")
    parser.add_argument("--device", default="cpu", help="where the generators of the figure run (default cpu)")
    args = parser.parse_args(argv)

    def work(state):
        from engine.attack.report import write_privacy_report

        state.output = args.output
        collected = write_privacy_report(args.runs, args.output, args.device)
        print(f"{len(collected)} runs compared: {args.output}")

    return run_command(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
