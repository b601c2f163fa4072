"""The data contract (DESIGN section 3): read, validate and write NPZ and HDF5 datasets.

The reader accepts what older files contain (key ``diffraction``, layout (N, N, M)) and never
unpickles: NPZ files are opened with ``allow_pickle=False`` and an object array is rejected by
name. Every rejection names the file, the key, what was expected and what was found, and lists the
keys present. Beyond DESIGN's keys a file may carry ``valid_pixels`` (N, N), the detector's mask:
the pixels it did not measure (a beamstop, module gaps) hold 0 and every likelihood leaves them out.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import NETWORK_LEVELS, PATTERN_MULTIPLE
from .errors import PtylabError
from .fileio import atomic_write_with
from .metrics import pearson
from .physics import far_field, patches_inside

NPZ_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class DataError(PtylabError, ValueError):
    """A dataset file violates the contract; the message says where and how."""

    def __init__(self, path: str | Path, key: str | None, expected: str, found: str, keys: list[str] | None):
        """``keys``: the keys the file holds, listed in the message; None where there is no file to list."""
        self.path, self.key = str(path), key
        where = f"key '{key}'" if key else "file"
        listed = "" if keys is None else f". Keys present: {sorted(keys) or 'none'}"
        super().__init__(f"{path}: {where}: expected {expected}; found {found}{listed}")


class RowSubset:
    """Rows ``index`` of a (possibly memory-mapped) array, read only when indexed.

    A view or split of a memory-mapped file would otherwise copy its rows into memory
    (``mapped[index]``); this keeps memory independent of the dataset's size. It supports what the
    pipeline does with ``diff3d`` and ``Y``: ``shape``, ``dtype``, ``len`` and indexing the first axis
    with an integer, a slice or an integer array (read in sorted order, which suits mapped files).
    """

    def __init__(self, base: Any, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape = (int(self.index.size), *base.shape[1:])
        self.dtype = base.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        rows = self.index[key]
        if np.ndim(rows) == 0:
            return np.asarray(self.base[int(rows)])
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        out[order] = self.base[rows[order]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def take_rows(arr: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of ``arr``: all of it unchanged, lazily for mapped files, else a copy."""
    if index.size == arr.shape[0] and np.array_equal(index, np.arange(arr.shape[0])):
        return arr
    if isinstance(arr, RowSubset):
        return RowSubset(arr.base, arr.index[index])
    if isinstance(arr, np.memmap):
        return RowSubset(arr, index)
    return arr[index]


STAT_CHUNK = 4096


def mean_total_counts(diff: np.ndarray, chunk: int = STAT_CHUNK) -> float:
    """Mean over patterns of the total counts sum(diff^2), in chunks: memory stays flat for any M."""
    total = 0.0
    for start in range(0, diff.shape[0], chunk):
        block = np.asarray(diff[start : start + chunk], dtype=np.float64)
        total += float(np.square(block).sum())
    return total / max(diff.shape[0], 1)


@dataclass
class PtychoData:
    """One split of a dataset, in the canonical layout of the contract."""

    diff3d: np.ndarray  # (M, N, N) float32 amplitudes
    xcoords: np.ndarray  # (M,) float64
    ycoords: np.ndarray  # (M,) float64
    probe: np.ndarray  # (N, N) complex64
    obj: np.ndarray  # (H, W) complex64
    Y: np.ndarray | None = None  # (M, N, N) complex64 ground-truth patches
    scan_index: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # (N, N) bool, True where the detector measured; None: every pixel. Pixels behind a beamstop,
    # in a module gap or dead hold no measurement, and every likelihood leaves them out.
    valid_pixels: np.ndarray | None = None

    @property
    def n_positions(self) -> int:
        return int(self.diff3d.shape[0])

    @property
    def N(self) -> int:
        return int(self.diff3d.shape[-1])

    @cached_property
    def mean_counts(self) -> float:
        """Mean total counts per pattern. Read once per split: the derived intensity scale, LSQML's
        probe and its matched start all need it, and on a large file each read is a pass over it."""
        return mean_total_counts(self.diff3d)

    def subset(self, index: np.ndarray) -> PtychoData:
        """The positions ``index`` (a view or a split), keeping their original scan indices."""
        index = np.asarray(index, dtype=np.int64)
        scan = self.scan_index if self.scan_index is not None else np.arange(self.n_positions)
        return replace(
            self,
            diff3d=take_rows(self.diff3d, index),
            xcoords=self.xcoords[index],
            ycoords=self.ycoords[index],
            Y=None if self.Y is None else take_rows(self.Y, index),
            scan_index=scan[index],
        )


def write_dataset(path: str | Path, data: PtychoData) -> None:
    """Write atomically; ``.h5``/``.hdf5`` give HDF5, anything else NPZ (uncompressed, memory-mappable)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "diff3d": np.ascontiguousarray(data.diff3d, dtype=np.float32),
        "xcoords": np.asarray(data.xcoords, dtype=np.float64),
        "ycoords": np.asarray(data.ycoords, dtype=np.float64),
        "probeGuess": np.asarray(data.probe, dtype=np.complex64),
        "objectGuess": np.asarray(data.obj, dtype=np.complex64),
        "metadata": np.array(json.dumps(data.metadata, sort_keys=True)),
    }
    if data.Y is not None:
        arrays["Y"] = np.asarray(data.Y, dtype=np.complex64)
    if data.scan_index is not None:
        arrays["scan_index"] = np.asarray(data.scan_index, dtype=np.int64)
    if data.valid_pixels is not None:
        arrays["valid_pixels"] = np.asarray(data.valid_pixels, dtype=bool)
    if path.suffix.lower() in (".h5", ".hdf5"):
        atomic_write_with(path, lambda tmp: _write_hdf5(tmp, arrays))
    else:
        atomic_write_with(path, lambda tmp: _write_npz(tmp, arrays))


def _write_npz(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def _write_hdf5(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            if key == "metadata":
                f.attrs["metadata"] = str(value)
            else:
                f.create_dataset(key, data=value, track_times=False)


def read_dataset(path: str | Path) -> PtychoData:
    """Read and validate a dataset file; raise DataError naming file and key on any violation."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "an existing NPZ or HDF5 file", "no such file", None)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise DataError(path, None, "an NPZ or HDF5 dataset", "an empty file (0 bytes)", [])
    if head.startswith(NPZ_MAGIC):
        raw = _read_npz(path)
    elif head.startswith(HDF5_MAGIC):
        raw = _read_hdf5(path)
    else:
        raise DataError(path, None, "an NPZ (zip) or HDF5 file", f"unrecognised leading bytes {head!r}", [])
    return validate(path, raw)


def pattern_size(path: str | Path) -> int | None:
    """The side N of a dataset file's patterns, as its probe gives it (the contract ties the patterns
    to the probe), read without reading the patterns: the command line checks a sweep's files with
    it before any job. None where the probe cannot be read that way; the job's full read then
    names the fault."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head.startswith(NPZ_MAGIC):
            with np.load(path, allow_pickle=False) as npz:
                shape = npz["probeGuess"].shape
        elif head.startswith(HDF5_MAGIC):
            import h5py

            with h5py.File(path, "r") as f:
                shape = f["probeGuess"].shape
        else:
            return None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return int(shape[0]) if len(shape) == 2 and shape[0] == shape[1] else None


def require_pattern_sizes(train_file: str | Path, train_n: int, test_file: str | Path, test_n: int) -> None:
    """A dataset's two files must hold patterns of one size that the network takes (a multiple of
    ``PATTERN_MULTIPLE``). Either fault used to surface as a tensor-size error inside training or,
    for the test file, after the whole training, in its evaluation."""
    if train_n % PATTERN_MULTIPLE:
        raise DataError(train_file, "diff3d", f"N x N patterns with N a multiple of {PATTERN_MULTIPLE} (the "
                        f"network halves N at each of its {NETWORK_LEVELS} levels: prepare the files at such "
                        "an N, with the probe and the positions to match)", f"{train_n} x {train_n}", None)
    if test_n != train_n:
        raise DataError(test_file, "diff3d", f"{train_n} x {train_n} patterns, as the training file {train_file} "
                        "holds (one network reconstructs both)", f"{test_n} x {test_n}", None)


MMAP_KEYS = ("diff3d", "diffraction", "Y")


def _mmap_npz_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed NPZ member in place (None if it cannot be mapped).

    A stored (not deflated) member is a plain .npy file at a known offset inside the zip, so large
    arrays are read page by page on demand instead of being loaded whole.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != NPZ_MAGIC:
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return None
        shape, fortran, dtype = readers[version](fh)  # parses the header literal only, never unpickles
        if dtype.hasobject or fortran:
            return None
        offset = fh.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        npz = np.load(path, allow_pickle=False, mmap_mode=None)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise DataError(path, None, "a readable NPZ archive", f"{type(exc).__name__}: {exc}", []) from exc
    keys = [k for k in npz.files]
    out: dict[str, Any] = {}
    with npz:
        members = {i.filename.removesuffix(".npy"): i for i in npz.zip.infolist()}
        for key in keys:
            try:
                mapped = _mmap_npz_member(path, members[key]) if key in MMAP_KEYS and key in members else None
                out[key] = mapped if mapped is not None else npz[key]
            except ValueError as exc:  # object arrays: numpy refuses without unpickling anything
                raise DataError(
                    path, key, "a numeric or string array", f"an object (pickled) array, refused: {exc}", keys
                ) from exc
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise DataError(path, key, "a complete array", f"a truncated member ({exc})", keys) from exc
    return out


def _read_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys())
            out: dict[str, Any] = {}
            for key in keys:
                node = f[key]
                if not isinstance(node, h5py.Dataset):
                    continue
                if node.dtype.kind == "O":
                    raise DataError(path, key, "a numeric dataset", "an object/variable-length dataset", keys)
                out[key] = node[()]
            if "metadata" in f.attrs:
                meta = f.attrs["metadata"]
                out["metadata"] = np.array(meta.decode() if isinstance(meta, bytes) else str(meta))
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(path, None, "a readable HDF5 file", f"{type(exc).__name__}: {exc}", []) from exc
    return out


CHUNK_PATTERNS = 4096


def _chunks(arr: np.ndarray) -> Any:
    """Validate large (possibly memory-mapped) arrays a slab at a time, never whole."""
    if arr.ndim == 0:
        yield arr
        return
    for start in range(0, max(arr.shape[0], 1), CHUNK_PATTERNS):
        yield np.asarray(arr[start : start + CHUNK_PATTERNS])


def _finite(path: Path, key: str, arr: np.ndarray, keys: list[str]) -> None:
    bad = sum(int(np.size(c) - np.count_nonzero(np.isfinite(c))) for c in _chunks(arr))
    if bad:
        raise DataError(path, key, "finite values", f"{bad} NaN or Inf values", keys)


MIN_VALID_SHARE = 0.5  # a mask that leaves less is more likely inverted (True where bad) than real

# Whole numbers among the values of 2 or more: sqrt(counts) is one only where the counts are a square
# (about 16% of such values on the simulated data), counts stored as floats always are.
COUNTS_WHOLE_SHARE, COUNTS_MIN_VALUES = 0.99, 1000
SAMPLE_PATTERNS = 512  # both checks read the first 512 patterns of a file
# The mean pattern's correlation with the probe's far-field intensity: 0.997-1.000 on every simulated
# dataset with zero frequency at the centre and -0.10 to -0.02 with it at the corners (docs/decisions.md).
FAR_FIELD_MATCH = 0.5


def _check_patterns_as_measured(path: Path, key: str, amplitudes: np.ndarray, probe: np.ndarray,
                                keys: list[str]) -> None:
    """Two mistakes the contract's shape and range checks let through, each of which trains a network
    on patterns its physics cannot produce, for a flat or garbled object after the whole budget:
    counts where amplitudes belong, and patterns with zero frequency in the corners (an FFT's output
    without ``fftshift``). Judged on the file's first ``SAMPLE_PATTERNS`` patterns."""
    large = amplitudes[amplitudes >= 2]
    if large.size >= COUNTS_MIN_VALUES and np.mean(large == np.round(large)) >= COUNTS_WHOLE_SHARE:
        raise DataError(path, key, "amplitudes sqrt(counts)",
                        f"whole numbers in {np.mean(large == np.round(large)):.1%} of its {large.size} values of 2 "
                        "or more, as counts are (store np.sqrt(counts))", keys)
    mean_intensity = np.square(amplitudes, dtype=np.float64).mean(axis=0)
    probe_far = far_field(torch.from_numpy(np.asarray(probe))).abs().square().double().numpy()
    centred, cornered = (pearson(mean_intensity, f) for f in (probe_far, np.fft.ifftshift(probe_far)))
    if cornered > FAR_FIELD_MATCH and centred < FAR_FIELD_MATCH:
        raise DataError(path, key, "patterns with zero frequency at the centre (np.fft.fftshift of an FFT)",
                        f"zero frequency at the corners: the mean pattern matches the probe's far field "
                        f"shifted to the corners (correlation {cornered:.2f}, centred {centred:.2f})", keys)


def validate(path: str | Path, raw: dict[str, Any]) -> PtychoData:
    """Check one file's arrays against the contract and return them in canonical layout."""
    path = Path(path)
    keys = list(raw)
    if not keys:
        raise DataError(path, None, "the contract's arrays (diff3d, xcoords, ycoords, probeGuess)", "none", keys)
    if "probeGuess" not in raw:
        raise DataError(path, "probeGuess", "a (N, N) complex probe", "key missing", keys)
    probe = np.asarray(raw["probeGuess"])
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or probe.dtype.kind not in "fc":
        raise DataError(path, "probeGuess", "a square (N, N) complex array", f"{probe.shape} {probe.dtype}", keys)
    _finite(path, "probeGuess", probe, keys)
    n = probe.shape[0]

    dkey = "diff3d" if "diff3d" in raw else "diffraction" if "diffraction" in raw else None
    if dkey is None:
        raise DataError(path, "diff3d", "diffraction amplitudes under 'diff3d' (or legacy 'diffraction')",
                        "neither key", keys)
    diff = np.asanyarray(raw[dkey])
    if diff.dtype.kind != "f":
        hint = " (store sqrt(counts) as float32)" if diff.dtype.kind in "iu" else ""
        raise DataError(path, dkey, f"float amplitudes sqrt(counts){hint}", f"dtype {diff.dtype}", keys)
    if diff.ndim != 3:
        raise DataError(path, dkey, f"a 3-D array (M, {n}, {n})", f"shape {diff.shape}", keys)
    if diff.shape[1:] != (n, n):
        if diff.shape[:2] == (n, n):
            diff = np.moveaxis(diff, -1, 0)  # legacy (N, N, M) layout
        else:
            raise DataError(path, dkey, f"shape (M, {n}, {n}) or legacy ({n}, {n}, M)", f"{diff.shape}", keys)
    m = diff.shape[0]
    if m == 0:
        raise DataError(path, dkey, "at least one diffraction pattern", "M = 0", keys)
    _finite(path, dkey, diff, keys)
    lowest = min(float(c.min()) for c in _chunks(diff))
    if lowest < 0:
        raise DataError(path, dkey, "non-negative amplitudes", f"minimum {lowest:.4g}", keys)
    _check_patterns_as_measured(path, dkey, np.asarray(diff[:SAMPLE_PATTERNS]), probe, keys)

    coords = {}
    for key in ("xcoords", "ycoords"):
        if key not in raw:
            raise DataError(path, key, f"({m},) patch-centre coordinates", "key missing", keys)
        c = np.asarray(raw[key])
        if c.dtype.kind not in "fiu" or c.ndim != 1 or c.shape[0] != m:
            raise DataError(path, key, f"a real 1-D array of length {m} (one per pattern)",
                            f"shape {c.shape} {c.dtype}", keys)
        _finite(path, key, c, keys)
        coords[key] = c.astype(np.float64)

    if "objectGuess" not in raw:
        raise DataError(path, "objectGuess", "a (H, W) complex object", "key missing", keys)
    obj = np.asarray(raw["objectGuess"])
    if obj.ndim != 2 or obj.dtype.kind not in "fc":
        raise DataError(path, "objectGuess", "a 2-D complex array", f"{obj.shape} {obj.dtype}", keys)
    inside = patches_inside(coords["xcoords"], coords["ycoords"], n, obj.shape)
    if not inside.all():
        first = int(np.flatnonzero(~inside)[0])
        span = max(float(np.ptp(c)) for c in coords.values())
        # Positions in metres or micrometres (an instrument's units) span less than a pixel.
        units = f"; the positions span {span:.3g}: they are patch centres in object pixels" if 0 < span < 1 else ""
        raise DataError(
            path, "xcoords/ycoords", f"every {n}x{n} patch, centred on its position, inside the {obj.shape} object",
            f"{int((~inside).sum())} patches leaving it (first: index {first} at "
            f"x={coords['xcoords'][first]:.2f}, y={coords['ycoords'][first]:.2f}){units}", keys,
        )

    y_patches = None
    if "Y" in raw:
        y_patches = np.asanyarray(raw["Y"])
        if y_patches.shape[1:] == (n, n) and y_patches.shape[0] != m and y_patches.shape[:2] == (n, n):
            y_patches = np.moveaxis(y_patches, -1, 0)
        if y_patches.shape != (m, n, n) or y_patches.dtype.kind not in "fc":
            raise DataError(path, "Y", f"complex patches of shape ({m}, {n}, {n})",
                            f"{y_patches.shape} {y_patches.dtype}", keys)
        if y_patches.dtype != np.complex64:
            y_patches = y_patches.astype(np.complex64)

    scan_index = None
    if "scan_index" in raw:
        scan_index = np.asarray(raw["scan_index"])
        if scan_index.shape != (m,) or scan_index.dtype.kind not in "iu":
            raise DataError(path, "scan_index", f"int64 of shape ({m},)", f"{scan_index.shape} {scan_index.dtype}",
                            keys)
        scan_index = scan_index.astype(np.int64)

    valid_pixels = None
    if "valid_pixels" in raw:
        valid_pixels = np.asarray(raw["valid_pixels"])
        if valid_pixels.shape != (n, n) or not (valid_pixels.dtype == bool or (
                valid_pixels.dtype.kind in "iu" and np.isin(valid_pixels, (0, 1)).all())):
            raise DataError(path, "valid_pixels", f"a ({n}, {n}) bool mask (or 0 / 1), True where the detector "
                            "measured", f"{valid_pixels.shape} {valid_pixels.dtype}", keys)
        valid_pixels = valid_pixels.astype(bool)
        if valid_pixels.mean() < MIN_VALID_SHARE:
            raise DataError(path, "valid_pixels", f"at least {MIN_VALID_SHARE:.0%} of the pixels measured",
                            f"{valid_pixels.mean():.1%}", keys)
        # Zero where unmeasured: the counts' totals, the network's input and the data checks then
        # need no mask of their own.
        unmeasured = max(float(np.abs(c[:, ~valid_pixels]).max(initial=0.0)) for c in _chunks(diff))
        if unmeasured > 0:
            raise DataError(path, dkey, "0 at every pixel valid_pixels marks unmeasured (set them to 0)",
                            f"values up to {unmeasured:.4g} there", keys)

    metadata: dict[str, Any] = {}
    if "metadata" in raw:
        meta = np.asarray(raw["metadata"])
        if meta.dtype.kind not in "US" or meta.ndim != 0:
            raise DataError(path, "metadata", "a 0-d string holding JSON", f"{meta.shape} {meta.dtype}", keys)
        try:
            metadata = json.loads(str(meta.item() if meta.dtype.kind == "U" else meta.item().decode()))
        except json.JSONDecodeError as exc:
            raise DataError(path, "metadata", "valid JSON", f"{exc}", keys) from exc
        if not isinstance(metadata, dict):
            raise DataError(path, "metadata", "a JSON object", type(metadata).__name__, keys)

    if diff.dtype != np.float32 or not diff.flags.c_contiguous:
        diff = np.ascontiguousarray(diff, dtype=np.float32)  # memory-mapped float32 data stays mapped
    return PtychoData(
        diff3d=diff,
        xcoords=coords["xcoords"],
        ycoords=coords["ycoords"],
        probe=probe.astype(np.complex64),
        obj=obj.astype(np.complex64),
        Y=y_patches,
        scan_index=scan_index,
        metadata=metadata,
        valid_pixels=valid_pixels,
    )
