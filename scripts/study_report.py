"""Turn a sweep directory into study.csv, study.md, metric-vs-dose plots and study.html.

    python scripts/study_report.py SWEEP_DIR [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptylab.study import write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--output-dir", type=Path, default=None, help="default: SWEEP_DIR/report")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    out = args.output_dir or args.sweep_dir / "report"
    summary = write_report(args.sweep_dir, out)
    if summary["rows"] == 0:
        print(f"error: no training_manifest.json found under {args.sweep_dir}", file=sys.stderr)
        return 2
    print((out / "study.md").read_text(), end="")
    print(f"wrote {out}/study.csv, study.md, study.html and {len(summary['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
