"""Benchmark the default model and job; every ratio is measured in this one process.

    python scripts/benchmark.py [quick=true] [bundle=RUN/wts.h5.zip] [output=benchmark.json]   (= ptylab-benchmark)

quick=true runs a reduced version (tiny data, few steps): it checks the harness, its numbers are
not the project's figures. bundle= scores inference and the LSQML comparison with a trained model.
"""

import sys

from ptylab.commands import benchmark

if __name__ == "__main__":
    sys.exit(benchmark())
