"""See `ptylab.commands`: this script is the `ptylab-compare` command.

    python scripts/compare.py key=value ...
"""

from ptylab.commands import compare

if __name__ == "__main__":
    compare()
