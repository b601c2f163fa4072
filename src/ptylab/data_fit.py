"""How well a reconstruction explains the measured test patterns: a score that needs no truth.

Every other score compares a reconstruction with the ground truth, which measured data do not
have (a user's ``objectGuess`` is at best a guess). This one compares the patterns a
reconstruction predicts at the test positions with the counts measured there: the Poisson
deviance per detector pixel, 2 [y ln(y / m) - (y - m)] for counts y and prediction m, beside its
expectation for counts drawn from m itself (the noise floor: about 1 where m is large, about
-2 m ln m where it is small). Their ratio is about 1 for the truth on simulated data, several
for a flat object, above 1 where the reconstruction misses structure the patterns show and below
1 where it has fitted their noise. One intensity scale is fitted in closed form (the Poisson
optimum for a fixed object, sum y / sum m, as the offset fit does), so a method's units never
enter: any constant object scores the same.

It says whether a reconstruction accounts for the data, which a flat image cannot fake; it is not
a score of closeness to the object. The offset fit and the refined arm are fitted to these same
patterns (in sample), and the refined arm explains them a little worse than the single pass while
matching the truth better (docs/quality.md, "A score that needs no truth").
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import xlogy
from scipy.stats import poisson

from .data import PtychoData
from .figures import data_fit_map
from .fileio import atomic_write_json
from .physics import uncentred_intensity, window_taps

# Patterns predicted at a time: bounds the memory of their windows, spectra and counts.
CHUNK = 512
# The noise floor is tabulated between these means (log-spaced) and taken from its asymptotes
# beyond them: -2 m ln m below (the first term of the sum), 1 + 1 / (6 m) above, where the two
# agree with the sum to 1e-9; between the nodes the interpolation is within 2e-5 of the sum.
FLOOR_TABLE = (1e-12, 1e3, 1501)


@dataclass(frozen=True)
class DataFit:
    """A reconstruction's Poisson deviance on the measured patterns, per detector pixel, its noise
    floor, and per pattern the two's ratio (for a map of where the data are not explained)."""

    deviance: float
    floor: float
    per_position: np.ndarray

    @property
    def ratio(self) -> float:
        return self.deviance / self.floor

    def summary(self) -> dict[str, float]:
        return {"deviance_per_px": self.deviance, "noise_floor_per_px": self.floor, "ratio": self.ratio}


@functools.cache
def _floor_table() -> tuple[np.ndarray, np.ndarray]:
    """(log m, log E[D]) at the table's nodes, each E[D] summed over the counts that carry its mass."""
    low, high, nodes = FLOOR_TABLE
    means = np.logspace(np.log10(low), np.log10(high), nodes)
    floors = np.empty_like(means)
    for i, m in enumerate(means):
        k = np.arange(max(0, int(m - 12 * np.sqrt(m))), int(m + 12 * np.sqrt(m) + 30) + 1)
        floors[i] = 2 * (float((poisson.pmf(k, m) * xlogy(k, k)).sum()) - float(xlogy(m, m)))
    return np.log(means), np.log(floors)


def expected_deviance(mean: np.ndarray) -> np.ndarray:
    """E[2 (y ln(y / m) - (y - m))] for y ~ Poisson(m), elementwise: the deviance's noise floor."""
    m = np.asarray(mean, np.float64)
    log_m, log_floor = _floor_table()
    low, high, _ = FLOOR_TABLE
    inside = np.exp(np.interp(np.log(np.clip(m, low, high)), log_m, log_floor))
    tiny = -2 * xlogy(m, m)
    large = 1 + 1 / (6 * np.maximum(m, high))
    return np.where(m < low, tiny, np.where(m > high, large, inside))


def deviance(counts: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """2 (y ln(y / m) - (y - m)) elementwise, 0 ln 0 = 0: the Poisson deviance of counts y."""
    return 2 * (xlogy(counts, counts) - xlogy(counts, mean) - (counts - mean))


def _chunks(data: PtychoData) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    for start in range(0, data.n_positions, CHUNK):
        sl = slice(start, start + CHUNK)
        yield (sl, torch.from_numpy(np.asarray(data.xcoords[sl], np.float64)),
               torch.from_numpy(np.asarray(data.ycoords[sl], np.float64)))


def _exit_waves(canvas: torch.Tensor, data: PtychoData) -> Iterator[tuple[slice, torch.Tensor]]:
    """The exit waves (probe times object window) at ``data``'s positions, a chunk at a time."""
    probe = torch.from_numpy(np.asarray(data.probe, np.complex64))
    for sl, x, y in _chunks(data):
        yield sl, probe * window_taps(canvas.shape, x, y, data.N, torch.float32).cut(canvas)


def exit_wave_energy(obj: np.ndarray, data: PtychoData) -> float:
    """The far-field intensities ``obj`` predicts at ``data``'s positions (unitary FFT), summed over
    the pixels the detector measured, so that one factor puts an object in the units of the measured
    counts (``data_fit``, ``lsqml.matched_start``). By Parseval the exit waves' energy, with no far
    field, where every pixel was measured."""
    canvas = torch.from_numpy(np.asarray(obj, np.complex64))
    if data.valid_pixels is None:
        return sum(float(waves.abs().square().double().sum()) for _, waves in _exit_waves(canvas, data))
    valid = np.fft.ifftshift(np.asarray(data.valid_pixels, bool))
    return sum(float(uncentred_intensity(waves).double().numpy()[..., valid].sum())
               for _, waves in _exit_waves(canvas, data))


def data_fit(obj: np.ndarray, data: PtychoData) -> DataFit:
    """How well ``obj`` (H, W complex, on ``data``'s object canvas) explains ``data``'s patterns.

    One scale matches the counts the object predicts on the measured pixels (``exit_wave_energy``,
    without a far field where every pixel was measured) to the measured total, ``data.mean_counts``,
    read once per split; pixels the detector did not measure are left out. The patterns are then
    predicted and scored a chunk at a time, so memory stays a chunk's whatever the split's size.
    The predictions are made on the CPU in single precision, as the offset fit makes them, so one
    object scores the same whatever device made it."""
    energy = exit_wave_energy(obj, data)
    if energy <= 0:
        raise ValueError("the object predicts no counts at the test positions (zero under the probe)")
    scale = data.mean_counts * data.n_positions / energy  # unmeasured pixels hold 0 (the reader's check)
    canvas = torch.from_numpy(np.asarray(obj, np.complex64))
    valid = None if data.valid_pixels is None else np.fft.ifftshift(np.asarray(data.valid_pixels, bool))
    per_pattern, per_floor = np.empty(data.n_positions), np.empty(data.n_positions)
    for sl, waves in _exit_waves(canvas, data):
        # A count where nothing is predicted costs a large deviance, not an infinite one.
        mean = np.maximum(scale * uncentred_intensity(waves).double().numpy(), np.finfo(np.float64).tiny)
        counts = np.fft.ifftshift(np.square(np.asarray(data.diff3d[sl], np.float64)), axes=(-2, -1))
        kept = (Ellipsis,) if valid is None else (Ellipsis, valid)
        per_pattern[sl] = deviance(counts, mean)[kept].reshape(len(counts), -1).sum(-1)
        per_floor[sl] = expected_deviance(mean)[kept].reshape(len(counts), -1).sum(-1)
    pixels = data.n_positions * (data.N**2 if valid is None else int(valid.sum()))
    with np.errstate(divide="ignore", invalid="ignore"):  # a pattern predicted dark everywhere has no ratio
        per_position = per_pattern / per_floor
    return DataFit(float(per_pattern.sum()) / pixels, float(per_floor.sum()) / pixels, per_position)


# The yardsticks ``reference_ratios`` gives, by the keys it gives them under.
REFERENCES = ("flat", "truth")


def reference_ratios(data: PtychoData) -> dict[str, float]:
    """The data fit of the yardsticks every reconstruction of ``data`` is read against: any flat
    object (its scale is fitted, so its level does not matter) and ``data``'s own object (the
    truth on simulated data, whose ratio is about 1; a guess on measured data, left out where a
    file gives zeros)."""
    out = {"flat": _flat_ratio(data)}
    if np.any(np.asarray(data.obj) != 0):
        out["truth"] = data_fit(data.obj, data).ratio
    return out


def _flat_ratio(data: PtychoData) -> float:
    return data_fit(np.ones(np.shape(data.obj), np.complex64), data).ratio


# What the reconstruct command writes beside its object: the data fit and its map.
DATA_FIT_FILE = "data_fit.json"
DATA_FIT_FIGURE = "data_fit.png"


def write_data_fit(out_dir: Path, obj: np.ndarray, data: PtychoData, title: str) -> dict[str, float]:
    """How well ``obj`` explains ``data``'s patterns, with a flat object's ratio beside it, written
    to ``DATA_FIT_FILE`` and drawn per pattern in ``DATA_FIT_FIGURE``: for a reconstruction of
    measured data, the one score that needs no truth. Returns what the file holds."""
    fit = data_fit(obj, data)
    summary = {**fit.summary(), "flat": _flat_ratio(data)}
    atomic_write_json(out_dir / DATA_FIT_FILE, summary)
    data_fit_map(out_dir / DATA_FIT_FIGURE, obj, data.xcoords, data.ycoords, fit.per_position, summary,
                 f"How well the reconstruction explains each pattern: {title}")
    return summary
