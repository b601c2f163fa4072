"""See `ptylab.commands`: this script is the `ptylab-simulate` command.

    python scripts/simulate.py key=value ...
"""

from ptylab.commands import simulate

if __name__ == "__main__":
    simulate()
