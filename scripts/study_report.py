"""Turn a sweep directory into study.csv, study.md, metric-vs-dose plots and study.html.

    python scripts/study_report.py SWEEP_DIR [output_dir=DIR]      (= ptylab-study-report)
"""

import sys

from ptylab.commands import study_report

if __name__ == "__main__":
    sys.exit(study_report())
