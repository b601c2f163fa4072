"""See `ptylab.commands`: this script is the `ptylab-reconstruct` command.

    python scripts/reconstruct.py key=value ...
"""

from ptylab.commands import reconstruct

if __name__ == "__main__":
    reconstruct()
