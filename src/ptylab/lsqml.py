"""The iterative LSQML reference from pty-chi (optional extra, its own environment).

Choices that change results, recorded with every run (see ../shared/notes/ptychi.md): a flat
start (never the ground truth; or another method's reconstruction, ``matched_start``), the known
probe carrying the data's intensity scale (pty-chi's FFT is unnormalised, so P_ptychi = s * P / N),
fixed unless ``lsqml.probe=refined`` (then pty-chi's LSQML refines it from that start, and the
data fit uses the probe it ends with), no first-epoch probe rescale, the Gaussian noise model by
default, positions relative to the object's centre.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from .config import EvalConfig
from .data import PtychoData
from .data_fit import data_fit, exit_wave_energy
from .models.factory import derived_intensity_scale
from .stitching import Stitched, illuminated_bbox

log = logging.getLogger(__name__)
NOT_INSTALLED = ("pty-chi is not installed in this environment: run `make ptychi` and use "
                 ".venv-ptychi/bin/python to include the LSQML reference")


def ptychi_available() -> bool:
    return importlib.util.find_spec("ptychi") is not None


def ptychi_version() -> str | None:
    """The installed pty-chi's version (None where it is not installed)."""
    try:
        return importlib.metadata.version("ptychi")
    except importlib.metadata.PackageNotFoundError:
        return None


def ptychi_positions(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Our patch centres (patch pixel N//2 at (x, y)) -> pty-chi's absolute positions.

    pty-chi cuts a patch whose top-left pixel is at ``position - (N - 1) / 2`` (origin specified as
    the array's (0, 0)); ours starts at ``x - N // 2``, hence a half-pixel offset for even N.
    """
    shift = n // 2 - (n - 1) / 2
    return x - shift, y - shift


def measured_intensities(diff: Any, chunk: int = 4096) -> np.ndarray:
    """Intensities (amplitude squared), float32, built chunk by chunk: pty-chi holds its data in
    memory, so this is the one full-size array the reference needs, and no temporary doubles it."""
    out = np.empty(diff.shape, np.float32)
    for start in range(0, diff.shape[0], chunk):
        np.square(np.asarray(diff[start : start + chunk], np.float32), out=out[start : start + chunk])
    return out


def data_scale(data: PtychoData) -> float:
    """The intensity scale LSQML's probe carries: the data's own, else the one derived for an object
    of RMS amplitude 1."""
    scale = data.metadata.get("intensity_scale")
    return float(scale) if scale is not None else derived_intensity_scale(data)


def matched_start(start: Stitched, data: PtychoData) -> np.ndarray:
    """A stitched object as LSQML's start: scaled so that the counts it models at ``data``'s
    positions total the measured counts, pixels the stitch left empty (zero: no weight, or below
    ``placement.MIN_WEIGHT_SHARE`` outside the evaluated area) set to its mean amplitude.

    A network's amplitudes are in its own units (its intensity scale assumes an object of RMS
    amplitude ``model.reference_amplitude`` where the data state no scale); matching the total
    counts (sum |F(s P O)|^2 = s^2 sum |F(P O)|^2 on the measured pixels, ``data_fit.exit_wave_energy``,
    the data fit's own scale) puts any start in the units of LSQML's probe without knowing them.
    """
    stitched = start.obj != 0
    if not stitched.any():
        raise ValueError("the start object has no stitched pixel")
    obj = np.where(stitched, start.obj, np.abs(start.obj[stitched]).mean()).astype(np.complex64)
    measured = data.mean_counts * data.n_positions
    factor = math.sqrt(measured / (data_scale(data) ** 2 * exit_wave_energy(obj, data)))
    return (obj * factor).astype(np.complex64)


def run_lsqml(data: PtychoData, epochs: int, noise_model: str = "gaussian", device: str = "cpu",
              batch_size: int = 96, seed: int = 0, start: np.ndarray | None = None,
              start_name: str = "flat", refine_probe: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Reconstruct ``data`` from a flat object, or from ``start`` (``matched_start``) named
    ``start_name``, with the data's probe fixed or refined; return the (H, W) complex object, the
    probe it was reconstructed under in the data's units and convention (the data's where fixed),
    and what was run."""
    import ptychi.api as api
    from ptychi.api.enums import ObjectPosOriginCoordsMethods
    from ptychi.api.task import PtychographyTask

    n = data.N
    scale = data_scale(data) / n
    probe = (data.probe * scale).astype(np.complex64)[None, None]
    obj0 = (np.ones(data.obj.shape, np.complex64) if start is None else start.astype(np.complex64))[None]
    px, py = ptychi_positions(data.xcoords, data.ycoords, n)

    opts = api.LSQMLOptions()
    opts.data_options.fft_shift = True
    opts.object_options.optimizable = True
    opts.object_options.determine_position_origin_coords_by = ObjectPosOriginCoordsMethods.SPECIFIED
    opts.object_options.position_origin_coords = np.zeros(2)
    opts.object_options.remove_object_probe_ambiguity.enabled = False
    opts.probe_options.optimizable = refine_probe
    opts.probe_position_options.optimizable = False
    rec = opts.reconstructor_options
    rec.num_epochs = epochs
    rec.batch_size = batch_size
    rec.noise_model = api.NoiseModels(noise_model)
    rec.rescale_probe_intensity_in_first_epoch = False
    rec.default_device = api.Devices.CPU if device == "cpu" else api.Devices.GPU
    rec.random_seed = seed
    t0 = time.perf_counter()
    # The detector's unmeasured pixels, in the data's centred convention (pty-chi shifts it with them).
    mask = {} if data.valid_pixels is None else {"valid_pixel_mask": np.asarray(data.valid_pixels, bool)}
    task = PtychographyTask(opts, diffraction_data=measured_intensities(data.diff3d), object_data=obj0,
                            probe_data=probe, probe_position_x_px=px, probe_position_y_px=py, **mask)
    task.run()
    wall = time.perf_counter() - t0
    obj = np.asarray(task.get_data_to_cpu("object", as_numpy=True))[0].astype(np.complex64)
    ended = (np.asarray(task.get_data_to_cpu("probe", as_numpy=True))[0, 0] / scale).astype(np.complex64)
    info = {"iterations": epochs, "wall_s": round(wall, 2), "noise_model": noise_model, "start": start_name,
            "probe": ("the data's, refined (relative change "
                      f"{np.linalg.norm(ended - data.probe) / np.linalg.norm(data.probe):.4f}), not rescaled first"
                      if refine_probe else "known, fixed, not rescaled"),
            "object_probe_ambiguity_removal": False,
            "batch_size": batch_size, "device": device, "ptychi": ptychi_version(),
            "positions": "x - 0.5, y - 0.5 with origin (0, 0)",
            "valid_pixels": "all" if data.valid_pixels is None else int(np.count_nonzero(data.valid_pixels))}
    log.info("LSQML: %d epochs in %.1f s", epochs, wall)
    return obj, (ended if refine_probe else data.probe), info


def reconstruct_and_score(data: PtychoData, epochs: int, eval_cfg: EvalConfig, noise_model: str = "gaussian",
                          device: str = "cpu", start: Stitched | None = None, start_name: str = "flat",
                          refine_probe: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """LSQML on ``data`` (from a flat object, or from ``start``: another method's stitched object)
    scored exactly as the networks are (same region, registration, alignment), with the same data
    fit, under the probe it reconstructed with."""
    from .evaluation import DATA_FIT, score_reconstruction

    obj0 = None if start is None else matched_start(start, data)
    obj, probe, info = run_lsqml(data, epochs, noise_model, device, start=obj0, start_name=start_name,
                                 refine_probe=refine_probe)
    stitched = Stitched(obj, np.ones(obj.shape, np.float32), illuminated_bbox(data))
    fit = data_fit(obj, replace(data, probe=probe))
    return {**score_reconstruction(stitched, data.obj, eval_cfg), DATA_FIT: fit.summary()}, info
