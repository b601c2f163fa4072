"""CONFIG-001: the legacy flat parameter dict, filled once per job from the composed config.

Older tooling reads keys such as ``N``, ``gridsize``, ``probe.trainable``. The rules (DESIGN
section 8): one function fills it (``bridge``) through the explicit table below; after that it is
sealed (a write raises); reading before the bridge raises; it is cleared when the job ends so that
jobs sharing a process never see each other's values. Library code never reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, OmegaConf


class LegacyParamsError(RuntimeError):
    pass


def _path(dotted: str) -> Callable[[DictConfig, str], Any]:
    def get(cfg: DictConfig, _out: str) -> Any:
        value = OmegaConf.select(cfg, dotted, default=None)
        return str(value) if isinstance(value, StrEnum) else value  # params.json holds plain values

    return get


# legacy key -> how its value is obtained from the composed config (and the job's output directory).
LEGACY_MAP: dict[str, Callable[[DictConfig, str], Any]] = {
    "N": _path("dataset.N"),
    "gridsize": _path("gridsize"),
    "offset": _path("dataset.scan_step"),
    "batch_size": _path("model.batch_size"),
    "nepochs": _path("trainer.max_epochs"),
    "n_filters_scale": _path("model.width"),
    "nphotons": _path("dose"),
    # Patches are merged on a shared canvas (the overlap constraint) when a group has several.
    "object.big": lambda cfg, _out: int(cfg.gridsize) > 1,
    # The object may be predicted beyond the central N/2 region.
    "probe.big": lambda cfg, _out: str(cfg.model.object_support) == "full",
    "probe.mask": _path("model.probe_mask"),
    "probe.trainable": _path("model.probe_trainable"),
    "intensity_scale.trainable": _path("model.intensity_scale_trainable"),
    "amp_activation": _path("model.amp_activation"),
    "nll_weight": _path("model.nll_weight"),
    "mae_weight": _path("model.mae_weight"),
    "model_type": _path("model.name"),
    "output_prefix": lambda _cfg, out: out,
    "train_data_file_path": _path("dataset.train_file"),
    "test_data_file_path": _path("dataset.test_file"),
    "npseed": _path("seed"),
}
# Keys whose values name places on disk: the bundle stores them location-free (see bundle docs).
LOCATION_KEYS = ("output_prefix", "train_data_file_path", "test_data_file_path")


class _LegacyParams:
    """The process-wide legacy dict with the bridge's seal."""

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None

    def fill(self, cfg: DictConfig, output_dir: str) -> Mapping[str, Any]:
        if self._values is not None:
            raise LegacyParamsError("legacy params already bridged for this job; clear() must run between jobs")
        values = {}
        for key, get in LEGACY_MAP.items():
            value = get(cfg, output_dir)
            if value is not None:
                values[key] = value
        self._values = values
        return MappingProxyType(values)

    def _require(self) -> dict[str, Any]:
        if self._values is None:
            raise LegacyParamsError("legacy params read before the bridge ran (ptylab.legacy_params.bridge)")
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._require()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._require().get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._require())

    def __setitem__(self, key: str, value: Any) -> None:
        if self._values is None:
            raise LegacyParamsError(f"cannot set '{key}': only the bridge fills legacy params")
        raise LegacyParamsError(f"legacy params are sealed after the bridge; refusing to set '{key}'")

    def clear(self) -> None:
        self._values = None

    @property
    def bridged(self) -> bool:
        return self._values is not None


params = _LegacyParams()


def bridge(cfg: DictConfig, output_dir: str) -> Mapping[str, Any]:
    """Fill the legacy dict from the composed config; the one and only writer."""
    return params.fill(cfg, output_dir)


@contextlib.contextmanager
def bridged(cfg: DictConfig, output_dir: str) -> Iterator[Mapping[str, Any]]:
    """Bridge for the length of one job, and clear afterwards whatever happens."""
    try:
        yield bridge(cfg, output_dir)
    finally:
        params.clear()


def location_free(values: Mapping[str, Any]) -> dict[str, Any]:
    """The dict with on-disk locations reduced to names, for content that must not depend on where it ran."""
    from pathlib import PurePath

    out = dict(values)
    if "output_prefix" in out:
        out["output_prefix"] = "."
    for key in LOCATION_KEYS[1:]:
        if key in out:
            out[key] = PurePath(str(out[key])).name
    return out
