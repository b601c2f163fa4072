"""Models: the self-supervised PINN and the supervised baseline, sharing one encoder-decoder."""

from .base import PtychoModule
from .pinn import PINN
from .supervised import Supervised

MODEL_CLASSES: dict[str, type[PtychoModule]] = {"pinn": PINN, "supervised": Supervised}

__all__ = ["MODEL_CLASSES", "PINN", "PtychoModule", "Supervised"]
