"""ptylab: dose/overlap studies of physics-informed neural networks for ptychography."""

import os

# Bit-reproducible CPU training. MKL (behind torch's CPU FFT and BLAS) picks code paths by CPU
# feature and memory alignment unless its Conditional Numerical Reproducibility mode is set, so
# the same seeded job could end 1e-7 away from itself, with another bundle digest: seen for
# resumed jobs on a busy machine (0 of 4 kill-and-resume tests exact under load; 4 of 4 with
# MKL_CBWR=AUTO,STRICT, which keeps the fastest code path for the CPU). MKL reads the variable
# at its first call, hence here, before torch runs anything; a value the user exported wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
