"""Compare the privacy of several protection runs: one table (Markdown + JSON) and two figures.

    python -m tools.privacy_report --runs log/privacy/pixelfade log/privacy/blur --output log/privacy/report

Each run is a protect_image.py output folder whose attacks are done (recovery_attack.py --attacker all).
The work is in ``engine.attack.report``; ``collect_privacy`` and ``write_privacy_report`` are
re-exported here for other commands.
"""
import argparse
import sys

from engine.attack.report import collect_privacy, write_privacy_report

__all__ = ["collect_privacy", "main", "write_privacy_report"]
PROG = "privacy_report.py"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="protect run folders, one per method")
    parser.add_argument("--output", required=True, help="folder for privacy_report.md/.json and the figures")
    parser.add_argument("--device", default="cpu", help="where the generators of the figure run (default cpu)")
    args = parser.parse_args(argv)

    from utils.errors import PixelFadeError, report_error

    try:
        collected = write_privacy_report(args.runs, args.output, args.device)
    except PixelFadeError as err:
        return report_error(PROG, err)
    print(f"{len(collected)} runs compared: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
