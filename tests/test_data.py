import json
import pathlib
import pickle

import h5py
import numpy as np
import pytest

from ptylab.cli import preflight
from ptylab.data import DataError, PtychoData, pattern_size, read_dataset, write_dataset
from ptylab.datasets import load_files
from ptylab.fileio import atomic_write_with


def _valid(m: int = 6, n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    size = 3 * n  # positions from n/2 to 2.5 n keep every patch inside
    return {
        "diff3d": rng.random((m, n, n)).astype(np.float32),
        "xcoords": np.linspace(n / 2, 2.5 * n, m),
        "ycoords": np.linspace(n / 2 + 1, 2.5 * n - 2, m),
        "probeGuess": np.ones((n, n), np.complex64),
        "objectGuess": np.ones((size, size), np.complex64),
        "Y": np.ones((m, n, n), np.complex64),
        "metadata": np.array(json.dumps({"nphotons": 10.0})),
    }


def _save(path: pathlib.Path, arrays: dict) -> pathlib.Path:
    np.savez(path, **arrays)
    return path


def test_npz_and_hdf5_round_trip(tmp_path):
    data = read_dataset(_save(tmp_path / "a.npz", _valid()))
    write_dataset(tmp_path / "b.h5", data)
    write_dataset(tmp_path / "c.npz", data)
    for name in ("b.h5", "c.npz"):
        again = read_dataset(tmp_path / name)
        np.testing.assert_array_equal(again.diff3d, data.diff3d)
        np.testing.assert_array_equal(again.xcoords, data.xcoords)
        np.testing.assert_array_equal(again.Y, data.Y)
        assert again.metadata == {"nphotons": 10.0}


def test_legacy_key_and_layout_load_to_the_same_arrays(tmp_path):
    arrays = _valid(m=5)
    canonical = read_dataset(_save(tmp_path / "canonical.npz", arrays))
    legacy = dict(arrays)
    legacy["diffraction"] = np.moveaxis(legacy.pop("diff3d"), 0, -1)  # (N, N, M)
    old = read_dataset(_save(tmp_path / "legacy.npz", legacy))
    np.testing.assert_array_equal(old.diff3d, canonical.diff3d)
    np.testing.assert_array_equal(old.ycoords, canonical.ycoords)


def _mutate(**changes):
    arrays = _valid()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


BAD = {
    "missing_diff": (_mutate(diff3d=None), "diff3d", "neither key"),
    "missing_coords": (_mutate(xcoords=None), "xcoords", "key missing"),
    "coords_length": (_mutate(ycoords=np.zeros(4)), "ycoords", "length 6"),
    "nan": (_mutate(diff3d=np.full((6, 8, 8), np.nan, np.float32)), "diff3d", "NaN or Inf"),
    "inf_coords": (_mutate(xcoords=np.array([4, 5, np.inf, 7, 8, 9.0])), "xcoords", "NaN or Inf"),
    "negative": (_mutate(diff3d=-np.ones((6, 8, 8), np.float32)), "diff3d", "non-negative"),
    "complex": (_mutate(diff3d=np.ones((6, 8, 8), np.complex64)), "diff3d", "dtype complex64"),
    "integer": (_mutate(diff3d=np.ones((6, 8, 8), np.int64)), "diff3d", "sqrt(counts)"),
    "outside": (_mutate(xcoords=np.array([4, 5, 6, 7, 8, 20.5])), "xcoords/ycoords", "leaving it"),
    "metres": (_mutate(xcoords=np.linspace(0, 3e-6, 6), ycoords=np.linspace(0, 2e-6, 6)), "xcoords/ycoords",
               "the positions span 3e-06: they are patch centres in object pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_are_rejected_naming_file_key_and_keys(tmp_path, case):
    arrays, key, found = BAD[case]
    path = _save(tmp_path / f"{case}.npz", arrays)
    with pytest.raises(DataError) as err:
        read_dataset(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{key}'" in msg and found in msg
    assert "Keys present: [" in msg and "probeGuess" in msg


class _Trap:
    """Unpickling this would create a file: proof that the reader never unpickles."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    arrays = _valid()
    arrays["metadata"] = np.array([_Trap(marker)], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)
    pickle.dumps(arrays["metadata"])  # the trap is real: pickle can serialise it
    with pytest.raises(DataError, match=r"key 'metadata'.*object \(pickled\) array, refused"):
        read_dataset(path)
    assert not marker.exists()


def test_empty_truncated_and_foreign_files(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.npz: file: .*empty file"):
        read_dataset(empty)
    good = _save(tmp_path / "good.npz", _valid(m=50, n=16))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.npz"):
        read_dataset(cut)
    text = tmp_path / "notes.npz"
    text.write_text("not data")
    with pytest.raises(DataError, match=r"notes\.npz: file: expected an NPZ \(zip\) or HDF5 file"):
        read_dataset(text)
    missing = r"absent\.npz: file: expected an existing NPZ or HDF5 file; found no such file$"
    with pytest.raises(DataError, match=missing):
        read_dataset(tmp_path / "absent.npz")  # no "Keys present" for a file that is not there


def test_hdf5_missing_key_is_named(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        for k, v in _valid().items():
            if k not in ("metadata", "diff3d"):
                f[k] = v
    with pytest.raises(DataError, match=r"bad\.h5: key 'diff3d'.*Keys present: \['Y', 'objectGuess'"):
        read_dataset(path)


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.npz"

    def half_then_crash(tmp):
        tmp.write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, half_then_crash)
    assert list(tmp_path.iterdir()) == []


def test_subset_keeps_original_scan_index():
    arrays = _valid()
    data = PtychoData(arrays["diff3d"], arrays["xcoords"], arrays["ycoords"], arrays["probeGuess"],
                      arrays["objectGuess"])
    sub = data.subset(np.array([4, 1]))
    np.testing.assert_array_equal(sub.scan_index, [4, 1])
    np.testing.assert_array_equal(sub.subset(np.array([1])).scan_index, [1])


def test_uncompressed_npz_is_memory_mapped_not_loaded(tmp_path):
    arrays = _valid(m=40, n=16)
    path = _save(tmp_path / "big.npz", arrays)
    data = read_dataset(path)
    assert isinstance(data.diff3d, np.memmap) and isinstance(data.Y, np.memmap)
    np.testing.assert_array_equal(np.asarray(data.diff3d), arrays["diff3d"])
    compressed = tmp_path / "small.npz"
    np.savez_compressed(compressed, **arrays)
    again = read_dataset(compressed)
    assert not isinstance(again.diff3d, np.memmap)
    np.testing.assert_array_equal(again.diff3d, arrays["diff3d"])


def test_training_batches_gather_from_the_map_without_copying_it(tmp_path):
    from ptylab.batches import GroupedPatterns
    from ptylab.grouping import group_positions

    data = read_dataset(_save(tmp_path / "big.npz", _valid(m=40, n=16)))
    ds = GroupedPatterns(data.diff3d, group_positions(data.xcoords, data.ycoords, 2, 7))
    assert ds.diff is data.diff3d  # the dataset holds the map itself
    batch = ds.__getitems__([0, 5, 7])
    np.testing.assert_array_equal(batch["diff"][1, 0].numpy(), data.diff3d[ds.indices[5, 0]])


def test_pattern_sizes_the_network_cannot_take_are_refused_before_any_training(tmp_path, capsys):
    """A pattern size that is no multiple of 8, or a test file of another size than the training
    file's, used to fail as a tensor-size error inside training or, for the test file, after the
    whole training, in its evaluation. The command line reads the sizes from the files' probes
    before any job of a sweep; the job's own read checks them again."""
    eight, twelve = _save(tmp_path / "eight.npz", _valid(n=8)), _save(tmp_path / "twelve.npz", _valid(n=12))
    sixteen = tmp_path / "sixteen.h5"
    write_dataset(sixteen, read_dataset(_save(tmp_path / "s.npz", _valid(n=16))))
    (tmp_path / "junk.npz").write_bytes(NPZ_JUNK)
    assert [pattern_size(p) for p in (eight, twelve, sixteen)] == [8, 12, 16]  # NPZ and HDF5
    assert pattern_size(tmp_path / "junk.npz") is None and pattern_size(tmp_path / "none.npz") is None

    with pytest.raises(DataError) as info:
        load_files(str(twelve), str(twelve))
    assert info.value.path == str(twelve) and "N a multiple of 8" in str(info.value)
    assert str(info.value).endswith("found 12 x 12")
    with pytest.raises(DataError) as info:
        load_files(str(eight), str(sixteen))
    assert info.value.path == str(sixteen) and "8 x 8 patterns, as the training file" in str(info.value)
    assert load_files(str(sixteen), str(sixteen)).test.N == 16

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        preflight("train", ["-m", "dose=1000,10000", "dataset=npz", f"dataset.train_file={eight}",
                            f"dataset.test_file={sixteen}", f"paths.output_root={out}"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {sixteen}: key 'diff3d': expected 8 x 8 patterns") and "found 16 x 16" in line
    assert not out.exists()


NPZ_JUNK = b"PK\x03\x04 not a zip archive"


def test_counts_and_patterns_with_zero_frequency_in_the_corners_are_refused(tmp_path):
    """Two mistakes that pass every shape and range check and leave the network nothing its physics
    can fit: counts where sqrt(counts) belongs, and an FFT's output without ``fftshift``."""
    n, m = 16, 32
    yy, xx = np.mgrid[:n, :n] - n // 2
    probe = (np.hypot(yy, xx) < 4).astype(np.complex64)
    far_field = np.abs(np.fft.fftshift(np.fft.fft2(probe))) ** 2  # an empty object's patterns, centred
    counts = np.random.default_rng(1).poisson(far_field / far_field.max() * 1e4, size=(m, n, n)).astype(np.float32)
    arrays = {**_valid(m, n), "probeGuess": probe, "diff3d": np.sqrt(counts)}
    assert read_dataset(_save(tmp_path / "good.npz", arrays)).diff3d.shape == (m, n, n)

    with pytest.raises(DataError) as info:
        read_dataset(_save(tmp_path / "counts.npz", {**arrays, "diff3d": counts}))
    assert info.value.key == "diff3d" and "expected amplitudes sqrt(counts)" in str(info.value)
    assert "store np.sqrt(counts)" in str(info.value)

    corners = np.fft.ifftshift(np.sqrt(counts), axes=(-2, -1))
    with pytest.raises(DataError) as info:
        read_dataset(_save(tmp_path / "corners.npz", {**arrays, "diff3d": corners}))
    assert info.value.key == "diff3d" and "zero frequency at the corners" in str(info.value)
    assert "np.fft.fftshift" in str(info.value)


def test_a_detector_mask_round_trips_and_a_bad_one_is_refused_naming_it(tmp_path):
    """``valid_pixels`` (N, N), True where the detector measured; the pixels it leaves out must
    hold 0 (so totals and the network's input need no mask of their own)."""
    arrays = _valid()
    valid = np.ones((8, 8), bool)
    valid[3:5, 3:5] = False
    arrays["diff3d"][:, ~valid] = 0
    data = read_dataset(_save(tmp_path / "masked.npz", {**arrays, "valid_pixels": valid.astype(np.uint8)}))
    np.testing.assert_array_equal(data.valid_pixels, valid)
    assert data.subset(np.array([0, 2])).valid_pixels is data.valid_pixels
    for name in ("again.npz", "again.h5"):
        write_dataset(tmp_path / name, data)
        np.testing.assert_array_equal(read_dataset(tmp_path / name).valid_pixels, valid)
    assert read_dataset(_save(tmp_path / "plain.npz", _valid())).valid_pixels is None

    bad = {
        "shape": ({**arrays, "valid_pixels": np.ones((8, 7), bool)}, "valid_pixels", "(8, 7) bool"),
        "values": ({**arrays, "valid_pixels": np.full((8, 8), 2)}, "valid_pixels", "(8, 8) int"),
        "inverted": ({**arrays, "valid_pixels": ~valid}, "valid_pixels", "at least 50% of the pixels measured"),
        "counts": ({**_valid(), "valid_pixels": valid}, "diff3d", "0 at every pixel valid_pixels marks unmeasured"),
    }
    for case, (content, key, needle) in bad.items():
        with pytest.raises(DataError) as info:
            read_dataset(_save(tmp_path / f"{case}.npz", content))
        assert info.value.key == key and needle in str(info.value), (case, str(info.value))
