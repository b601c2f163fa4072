"""The portable model bundle ``wts.h5.zip`` (DESIGN section 9).

A zip of ``manifest.json`` (format version, model kinds, sha256 of every entry), ``params.json``,
``config.yaml``, ``inference.json`` and one ``<kind>/wts.h5`` per model (weights as HDF5 datasets,
architecture hyperparameters as JSON attributes). No pickles: loading never executes code.

Byte determinism: entries sorted, fixed timestamps and permissions, a fixed compression level and
HDF5 written without object time stamps, so identical weights give an identical ``bundle_sha256``.
Location-dependent values (run directory, data paths) are stored location-free for the same reason.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .errors import PtylabError
from .fileio import atomic_write_bytes, atomic_write_text, check_format_version, sha256_bytes, sha256_file

FORMAT_VERSION = "2.0"  # major.minor; a newer major is refused, format 1 still loads
BUNDLE_NAME = "wts.h5.zip"
# Config nodes that say where things live or how progress is shown, not what is computed: kept out of
# the bundle, so the digest identifies the model alone.
LOCATION_NODES = ("paths", "ckpt_path", "redo", "resume")
PRESENTATION_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")
# Config values that name input files: the bundle keeps their names only, so its digest does not
# depend on where the files lie (the manifest identifies a starting network by its digest).
FILE_KEYS = (("dataset", "train_file"), ("dataset", "test_file"), ("dataset", "probe_file"), ("model", "init_weights"))
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class BundleError(PtylabError, ValueError):
    """A bundle that is missing, truncated, tampered with or of an unknown format."""


@dataclass
class ModelWeights:
    kind: str
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


@dataclass
class Bundle:
    path: Path
    sha256: str
    manifest: dict[str, Any]
    params: dict[str, Any]
    config_yaml: str
    inference: dict[str, Any]
    models: dict[str, ModelWeights]


def _weights_h5(weights: ModelWeights) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=("earliest", "v110"), track_order=True) as f:
        f.attrs["kind"] = weights.kind
        f.attrs["hparams"] = json.dumps(weights.hparams, sort_keys=True)
        f.attrs["format_version"] = FORMAT_VERSION
        group = f.create_group("state_dict", track_order=True)
        for name in sorted(weights.state_dict):
            tensor = weights.state_dict[name].detach().cpu().contiguous()
            group.create_dataset(name, data=tensor.numpy(), track_times=False)
    return buf.getvalue()


def _read_weights_h5(data: bytes, source: str) -> ModelWeights:
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            kind = str(f.attrs["kind"])
            hparams = json.loads(str(f.attrs["hparams"]))
            state = {name: torch.from_numpy(np.array(ds[()])) for name, ds in f["state_dict"].items()}
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{source}: unreadable weights ({exc})") from exc
    return ModelWeights(kind, hparams, state)


def bundle_bytes(models: dict[str, ModelWeights], params: dict[str, Any], config_yaml: str,
                 inference: dict[str, Any]) -> bytes:
    entries: dict[str, bytes] = {
        "params.json": json.dumps(params, indent=2, sort_keys=True).encode(),
        "config.yaml": config_yaml.encode(),
        "inference.json": json.dumps(inference, indent=2, sort_keys=True).encode(),
    }
    for name, weights in models.items():
        entries[f"{name}/wts.h5"] = _weights_h5(weights)
    manifest = {
        "format_version": FORMAT_VERSION,
        "models": {name: w.kind for name, w in sorted(models.items())},
        "entries": {name: sha256_bytes(data) for name, data in sorted(entries.items())},
    }
    entries["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, entries[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return buf.getvalue()


def write_bundle(path: str | Path, models: dict[str, ModelWeights], params: dict[str, Any], config_yaml: str,
                 inference: dict[str, Any]) -> str:
    """Write the bundle and its ``.sha256`` sidecar atomically; return the digest."""
    data = bundle_bytes(models, params, config_yaml, inference)
    digest = sha256_bytes(data)
    path = Path(path)
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


def load_bundle(path: str | Path, expected_sha256: str | None = None) -> Bundle:
    """Verify and load a bundle. Refuses (BundleError naming the file) any digest mismatch."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    digest = sha256_file(path)
    sidecar = path.with_name(path.name + ".sha256")
    if expected_sha256 is None and sidecar.is_file():
        expected_sha256 = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise BundleError(f"{path}: sha256 {digest} does not match the expected {expected_sha256}; "
                          "the bundle was modified or corrupted, refusing to load it")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "manifest.json" not in names:
                raise BundleError(f"{path}: not a ptylab bundle (no manifest.json)")
            manifest = json.loads(zf.read("manifest.json"))
            listed = manifest.get("entries", {})
            if set(listed) | {"manifest.json"} != names:
                raise BundleError(f"{path}: entries {sorted(names)} differ from the manifest's {sorted(listed)}")
            contents = {}
            for name, want in listed.items():
                data = zf.read(name)
                if sha256_bytes(data) != want:
                    raise BundleError(f"{path}: entry '{name}' fails its sha256 check; refusing to load")
                contents[name] = data
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, KeyError, ValueError, EOFError, OSError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{path}: corrupt bundle ({type(exc).__name__}: {exc}); refusing to load") from exc
    check_format_version(path, manifest.get("format_version"), FORMAT_VERSION, BundleError)
    models = {name: _read_weights_h5(contents[f"{name}/wts.h5"], f"{path}:{name}/wts.h5")
              for name in manifest["models"]}
    return Bundle(path, digest, manifest, json.loads(contents["params.json"]),
                  contents["config.yaml"].decode(), json.loads(contents["inference.json"]), models)


def bundle_config_yaml(cfg: DictConfig) -> str:
    """Resolved config without location-only nodes or presentation-only Trainer keys, input files by name."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    for key in LOCATION_NODES:
        container.pop(key, None)
    for key in PRESENTATION_TRAINER_KEYS:
        container.get("trainer", {}).pop(key, None)
    for node, key in FILE_KEYS:
        if container.get(node, {}).get(key):
            container[node][key] = PurePath(str(container[node][key])).name
    return OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)


def save_model_bundle(path: Path, model: torch.nn.Module, kind: str, inference: dict[str, Any],
                      params: dict[str, Any], config_yaml: str) -> str:
    """Write ``model`` (hyperparameters and weights) with what inference needs; return the digest."""
    saved: dict[str, Any] = dict(getattr(model, "hparams", {}))
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in saved.items()}
    weights = ModelWeights(kind, hparams, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    return write_bundle(path, {kind: weights}, params, config_yaml, inference)
