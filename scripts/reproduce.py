"""Re-run a finished job from its config snapshot and compare digest, metrics and params.

    python scripts/reproduce.py RUN_DIR [output_dir=DIR]      (= ptylab-reproduce)

Exit 0 when identical; otherwise prints each difference and exits 1; bad input exits 2.
"""

import sys

from ptylab.commands import reproduce

if __name__ == "__main__":
    sys.exit(reproduce())
