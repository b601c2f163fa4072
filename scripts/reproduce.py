"""Re-run a finished job from its config snapshot and compare digest, metrics and params.

    python scripts/reproduce.py RUN_DIR [--output-dir DIR]

Exit 0 when identical; otherwise prints each difference and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ptylab.reproduce import reproduce


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--output-dir", default=None,
                        help="where the re-run goes (default: <paths.output_root>/reproduced/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        report = reproduce(args.run_dir, args.output_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"original {report.original}: bundle sha256 {report.original_sha256}")
    print(f"re-run   {report.rerun}: bundle sha256 {report.rerun_sha256}")
    if report.identical:
        print("IDENTICAL: bundle digest, config, params and metrics all match")
        return 0
    print(f"DIFFERENT ({len(report.differences)}):")
    for line in report.differences:
        print(f"  {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
