"""The iterative LSQML reference from pty-chi (optional extra, its own environment).

Choices that change results, recorded with every run (see ../shared/notes/ptychi.md): a flat
start (never the ground truth), the known probe fixed and carrying the data's intensity scale
(pty-chi's FFT is unnormalised, so P_ptychi = s * P / N), no probe refinement, no first-epoch
probe rescale, the Gaussian noise model by default, positions relative to the object's centre.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

import numpy as np

from .config import EvalConfig
from .data import PtychoData
from .models.factory import derived_intensity_scale

log = logging.getLogger(__name__)
NOT_INSTALLED = ("pty-chi is not installed in this environment: run `make ptychi` and use "
                 ".venv-ptychi/bin/python to include the LSQML reference")


def ptychi_available() -> bool:
    return importlib.util.find_spec("ptychi") is not None


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


def run_lsqml(data: PtychoData, epochs: int, noise_model: str = "gaussian", device: str = "cpu",
              batch_size: int = 96, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Reconstruct ``data`` from a flat object; return the (H, W) complex object and what was run."""
    import ptychi.api as api
    from ptychi.api.enums import ObjectPosOriginCoordsMethods
    from ptychi.api.task import PtychographyTask

    scale = data.metadata.get("intensity_scale")
    if scale is None:
        scale = derived_intensity_scale(data)
    n = data.N
    probe = (data.probe * (scale / n)).astype(np.complex64)[None, None]
    flat = np.ones((1, *data.obj.shape), dtype=np.complex64)
    px, py = ptychi_positions(data.xcoords, data.ycoords, n)

    opts = api.LSQMLOptions()
    opts.data_options.fft_shift = True
    opts.object_options.optimizable = True
    opts.object_options.determine_position_origin_coords_by = ObjectPosOriginCoordsMethods.SPECIFIED
    opts.object_options.position_origin_coords = np.zeros(2)
    opts.object_options.remove_object_probe_ambiguity.enabled = False
    opts.probe_options.optimizable = False
    opts.probe_position_options.optimizable = False
    rec = opts.reconstructor_options
    rec.num_epochs = epochs
    rec.batch_size = batch_size
    rec.noise_model = api.NoiseModels(noise_model)
    rec.rescale_probe_intensity_in_first_epoch = False
    rec.default_device = api.Devices.CPU if device == "cpu" else api.Devices.GPU
    rec.random_seed = seed
    t0 = time.perf_counter()
    task = PtychographyTask(opts, diffraction_data=measured_intensities(data.diff3d), object_data=flat,
                            probe_data=probe, probe_position_x_px=px, probe_position_y_px=py)
    task.run()
    wall = time.perf_counter() - t0
    obj = np.asarray(task.get_data_to_cpu("object", as_numpy=True))[0].astype(np.complex64)
    info = {"iterations": epochs, "wall_s": round(wall, 2), "noise_model": noise_model, "start": "flat",
            "probe": "known, fixed, not rescaled", "object_probe_ambiguity_removal": False,
            "batch_size": batch_size, "device": device, "positions": "x - 0.5, y - 0.5 with origin (0, 0)"}
    log.info("LSQML: %d epochs in %.1f s", epochs, wall)
    return obj, info


def reconstruct_and_score(data: PtychoData, epochs: int, eval_cfg: EvalConfig, noise_model: str = "gaussian",
                          device: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """LSQML on ``data`` scored exactly as the networks are (same region, registration, alignment)."""
    from .evaluation import score_reconstruction
    from .stitching import Stitched, illuminated_bbox

    obj, info = run_lsqml(data, epochs, noise_model, device)
    stitched = Stitched(obj, np.ones(obj.shape, np.float32), illuminated_bbox(data))
    return score_reconstruction(stitched, data.obj, eval_cfg), info
