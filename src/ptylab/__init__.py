"""ptylab: dose/overlap studies of physics-informed neural networks for ptychography."""

__version__ = "0.1.0"
