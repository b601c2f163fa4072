"""Models: the self-supervised PINN and the supervised baseline, sharing one encoder-decoder."""

from .base import PtychoModule
from .pinn import PINN
from .supervised import Supervised

MODEL_CLASSES: dict[str, type[PtychoModule]] = {"pinn": PINN, "supervised": Supervised}

from .factory import build_model, start_from_bundle  # noqa: E402  (needs MODEL_CLASSES' modules first)

__all__ = ["MODEL_CLASSES", "PINN", "PtychoModule", "Supervised", "build_model", "start_from_bundle"]
