import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ptylab import legacy_params
from ptylab.bundle import BundleError, ModelWeights, bundle_config_yaml, load_bundle, write_bundle
from ptylab.legacy_params import LegacyParamsError, bridge, bridged, params
from ptylab.models import PINN
from ptylab.prediction import model_from_weights

from .conftest import compose_config


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return PINN(N=16, gridsize=2, base_filters=(4, 8, 8), width=1, probe=torch.ones(16, 16, dtype=torch.complex64),
                intensity_scale=5.0, input_scale=0.3, **kwargs).eval()


def _write(path, model, drop=()):
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.hparams.items() if k not in drop}
    w = ModelWeights("pinn", hparams, model.state_dict())
    return write_bundle(path, {"pinn": w}, {"N": 16}, "dose: 1.0\n", {"model": "pinn", "N": 16, "gridsize": 2,
                                                                      "neighbours": 7})


def test_bundle_round_trip_gives_identical_predictions(tmp_path):
    model = _model()
    digest = _write(tmp_path / "wts.h5.zip", model)
    bundle = load_bundle(tmp_path / "wts.h5.zip")
    assert bundle.sha256 == digest and len(digest) == 64
    assert (tmp_path / "wts.h5.zip.sha256").read_text().split()[0] == digest
    again = model_from_weights(bundle.models["pinn"])
    x = torch.rand(3, 4, 16, 16)
    off = torch.randn(3, 4, 2)
    with torch.no_grad():
        assert torch.equal(model.predict_object(x, off), again.predict_object(x, off))
    manifest = bundle.manifest
    assert manifest["models"] == {"pinn": "pinn"} and "pinn/wts.h5" in manifest["entries"]


@pytest.mark.parametrize("kwargs, drop", [
    ({"separate_decoders": True, "decoder_width": 0.5}, ()),
    ({"separate_decoders": True, "decoder_width": 0.5, "group_norm": "phase_decoder"}, ()),
    ({"separate_decoders": True, "bilinear_upsampling": "phase_decoder"}, ()),
    ({"bilinear_upsampling": "all"}, ()),
    # a bundle written before the keys existed: as it was
    ({}, ("decoder_width", "group_norm", "bilinear_upsampling")),
])
def test_decoder_variants_and_older_bundles_reload_identically(tmp_path, kwargs, drop):
    model = _model(2, **kwargs)
    _write(tmp_path / "wts.h5.zip", model, drop)
    again = model_from_weights(load_bundle(tmp_path / "wts.h5.zip").models["pinn"])
    x, off = torch.rand(2, 4, 16, 16), torch.randn(2, 4, 2)
    with torch.no_grad():
        assert torch.equal(model.predict_object(x, off), again.predict_object(x, off))


def test_identical_weights_give_identical_bytes(tmp_path):
    a = _write(tmp_path / "a" / "wts.h5.zip", _model(1))
    b = _write(tmp_path / "b" / "wts.h5.zip", _model(1))
    c = _write(tmp_path / "c" / "wts.h5.zip", _model(2))
    assert a == b != c


@pytest.mark.parametrize("keep_sidecar", [True, False])
def test_flipped_byte_is_refused_naming_the_file(tmp_path, keep_sidecar):
    path = tmp_path / "wts.h5.zip"
    _write(path, _model())
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    if not keep_sidecar:
        (tmp_path / "wts.h5.zip.sha256").unlink()
    with pytest.raises(BundleError, match=str(path)):
        load_bundle(path)


def test_bundle_holds_no_pickles(tmp_path):
    import zipfile

    path = tmp_path / "wts.h5.zip"
    _write(path, _model())
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert sorted(names) == names and all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
        for name in names:
            assert not zf.read(name).startswith(b"\x80")  # pickle protocol header
    assert set(names) == {"config.yaml", "inference.json", "manifest.json", "params.json", "pinn/wts.h5"}


def _cfg(dose=1000.0):
    return OmegaConf.create({
        "dose": dose, "gridsize": 2, "seed": 1,
        "dataset": {"N": 64, "scan_step": 3.0, "train_file": None, "test_file": None},
        "model": {"name": "pinn", "batch_size": 16, "width": 2, "object_support": "center", "probe_mask": False,
                  "probe_trainable": False, "intensity_scale_trainable": False, "amp_activation": "sigmoid",
                  "nll_weight": 1.0, "mae_weight": 0.0},
        "trainer": {"max_epochs": 3},
    })


def test_bridge_maps_the_table_and_leaves_out_none():
    with bridged(_cfg(), "/runs/a") as p:
        assert p["nphotons"] == 1000.0 and p["nepochs"] == 3 and p["n_filters_scale"] == 2
        assert p["probe.trainable"] is False and p["object.big"] is True and p["output_prefix"] == "/runs/a"
        assert "train_data_file_path" not in p
        assert params["N"] == 64
    assert set(legacy_params.LEGACY_MAP) >= {"N", "gridsize", "offset", "batch_size", "nepochs", "npseed"}


def test_read_before_bridge_and_write_after_seal_raise():
    params.clear()
    with pytest.raises(LegacyParamsError, match="before the bridge"):
        params["N"]
    with bridged(_cfg(), "/runs/a") as p:
        with pytest.raises(LegacyParamsError, match="sealed"):
            params["N"] = 128
        with pytest.raises(TypeError):
            p["N"] = 128  # the view handed out is read-only too
        with pytest.raises(LegacyParamsError, match="already bridged"):
            bridge(_cfg(), "/runs/b")
    assert not params.bridged


def test_jobs_in_one_process_never_see_each_others_values():
    seen = []
    for dose in (1000.0, 10000.0):
        with bridged(_cfg(dose), f"/runs/{dose}"):
            seen.append((params["nphotons"], params["output_prefix"]))
    assert seen == [(1000.0, "/runs/1000.0"), (10000.0, "/runs/10000.0")]
    with pytest.raises(LegacyParamsError):
        params.get("nphotons")


def test_location_free_params_for_the_bundle():
    with bridged(_cfg(), "/runs/a") as p:
        free = legacy_params.location_free(p)
    assert free["output_prefix"] == "." and json.dumps(free)
    assert np.isclose(free["nphotons"], 1000.0)


def test_the_bundles_config_names_input_files_without_their_directories():
    """A job on the same files in another place writes the same bundle config (so the same digest)."""
    def snapshot(where):
        return bundle_config_yaml(compose_config([
            "dataset=npz", f"dataset.train_file={where}/train.npz", f"dataset.test_file={where}/test.npz",
            f"model.init_weights={where}/runs/wts.h5.zip", "view=full"]))
    here, there = snapshot("/data/a"), snapshot("/scratch/b/c")
    assert here == there
    text = OmegaConf.create(here)
    assert (text.dataset.train_file, text.dataset.test_file, text.model.init_weights) == (
        "train.npz", "test.npz", "wts.h5.zip")
