"""Configs that would be silently ignored or fail late are refused at composition or validation.

Every case here was once accepted: a key of another model or dataset kind, a misspelt choice, an
out-of-range value. Each must fail before any data are touched, naming the key and the value.
"""

import pytest
import torch
from hydra.errors import ConfigCompositionException

from ptylab.cli import preflight
from ptylab.config import OFFSET_FIT_ORDERS, PinnConfig, ReconstructConfig, SupervisedConfig, validate
from ptylab.errors import ConfigError, PtylabError
from ptylab.manifest import Status
from ptylab.phase_offsets import OffsetFit
from ptylab.stages.train import run_job

from .conftest import ROOT, SMALL_OVERRIDES, compose_config, run_script

# One past the highest order the offset fit has, so that adding an order does not break the case.
NO_SUCH_ORDER = max(OFFSET_FIT_ORDERS) + 1


@pytest.mark.parametrize("overrides, schema", [
    (["model=supervised", "gridsize=1", "model.probe_trainable=true"], "SupervisedConfig"),
    (["dataset=npz", "dataset.scan_step=5"], "FileDatasetConfig"),
])
def test_key_of_another_kind_fails_at_composition(overrides, schema):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(overrides)
    assert schema in str(info.value.__cause__)


@pytest.mark.parametrize("override, valid", [
    ("model.object_support=centre", "center, full"),
    ("model.amp_activation=relu", "sigmoid, swish"),
    ("model.schedule=linear", "cosine, constant, plateau"),
    ("model.group_norm=batch", "none, phase_decoder, all"),
    ("model.bilinear_upsampling=bicubic", "none, phase_decoder, all"),
    ("view.name=medium", "dense, sparse, full, custom"),
    ("dataset.scan_pattern=spiral", "raster, fermat"),
    ("logger=wandb", "csv, tensorboard"),
])
def test_wrong_choice_fails_at_composition_with_the_valid_ones(override, valid):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config([override])
    assert valid in str(info.value.__cause__)


@pytest.mark.parametrize("override, group, options", [
    ("model=pinnn", "model", ["pinn", "supervised"]),
    ("dataset=npy", "dataset", ["embedded", "hdf5", "npz", "user_style"]),
])
def test_a_misspelt_config_choice_lists_the_configs_not_their_schemas(override, group, options):
    """The schemas live in groups of their own (schema/model, schema/dataset): a user choosing a
    model or a dataset is offered the configs there are, not ``pinn_schema`` beside ``pinn``."""
    with pytest.raises(ConfigCompositionException) as info:
        compose_config([override])
    listed = str(info.value).split(f"Available options in '{group}':")[1].split("Config search path")[0].split()
    assert listed == options


@pytest.mark.parametrize("overrides, key", [
    (["dose=-1"], "dose=-1.0"),
    (["dose=0"], "dose=0.0"),
    (["gridsize=4"], "gridsize=4"),
    (["view.target_overlap=1.5"], "view.target_overlap=1.5"),
    (["model.lr=0"], "model.lr=0.0"),
    (["model.probe_lr=-0.01"], "model.probe_lr=-0.01"),
    (["model.phase_tv=-0.1"], "model.phase_tv=-0.1"),
    (["model.separate_decoders=false", "model.group_norm=phase_decoder"], "model.group_norm='phase_decoder'"),
    (["model.separate_decoders=false", "model.group_norm=none", "model.bilinear_upsampling=phase_decoder"],
     "model.bilinear_upsampling='phase_decoder'"),
    (["model.decoder=transposed", "model.bilinear_upsampling=all"], "model.bilinear_upsampling='all'"),
    (["model=supervised", "gridsize=2"], "gridsize=2"),
    (["gridsize=1", "model.oversample=2"], "model.oversample=2"),
    (["gridsize=3", "model.neighbours=7"], "model.neighbours=7"),  # 7 nearest cannot give the 8 others
    (["gridsize=3", "model.neighbours=8", "model.oversample=1"], "model.neighbours=8"),  # needs alternatives
    (["model.neighbours=0"], "model.neighbours=0"),
    (["dataset.N=30"], "dataset.N=30"),
    (["dataset.scan_pattern=fermat", "dataset.scan_jitter=0.5"], "dataset.scan_jitter=0.5"),
    (["dataset.beamstop_radius=20"], "dataset.beamstop_radius=20.0"),  # more than N/4
    (["model.val_fraction=1.0"], "model.val_fraction=1.0"),
    ([f"eval.offset_fit_order={NO_SUCH_ORDER}"], f"eval.offset_fit_order={NO_SUCH_ORDER}"),
    (["eval.offset_fit_average=1.0"], "eval.offset_fit_average=1.0"),
    (["eval.offset_fit_phase_tv=-1"], "eval.offset_fit_phase_tv=-1.0"),
    (["eval.offset_fit_amplitude_tv=-0.5"], "eval.offset_fit_amplitude_tv=-0.5"),
    (["eval.average_symmetries=mirror"], "eval.average_symmetries='mirror'"),
    (["refine.average_symmetries=2"], "refine.average_symmetries='2'"),
    (["trainer=gpu", "trainer.deterministic=true"], "trainer.deterministic=True"),
])
def test_out_of_range_values_are_refused_with_key_and_value(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config(overrides))


@pytest.mark.parametrize("overrides, deterministic", [
    (["trainer=gpu"], False),
    (["trainer=gpu", "trainer.deterministic=warn"], "warn"),
    (["trainer=gpu", "trainer.deterministic=true", "model.bilinear_upsampling=none"], True),
    (["trainer=cpu"], True),
])
def test_determinism_is_refused_only_where_cuda_has_no_deterministic_bilinear_backward(overrides, deterministic):
    """The refusal above is narrow: a GPU run may warn instead, or upsample by nearest neighbour,
    and the CPU (whose bilinear backward is deterministic) keeps its default."""
    assert validate(compose_config(overrides)).trainer["deterministic"] == deterministic


@pytest.mark.parametrize("override, key", [
    ({"offset_fit_order": NO_SUCH_ORDER}, f"offset_fit_order={NO_SUCH_ORDER}"),
    ({"offset_fit_average": 1.0}, "offset_fit_average=1.0"),
    ({"offset_fit_steps": -1}, "offset_fit_steps=-1"),
    ({"offset_fit_phase_tv": -1.0}, "offset_fit_phase_tv=-1.0"),
    ({"offset_fit_amplitude_tv": -1.0}, "offset_fit_amplitude_tv=-1.0"),
])
def test_the_reconstruct_commands_fit_overrides_are_checked_as_evaluations_are(override, key):
    """The reconstruct command's overrides of a bundle's fit get the evaluation's ranges, and say
    what leaving them out means there."""
    with pytest.raises(ConfigError, match=rf"^{key}: must be .*or null \(the bundle's setting\)"):
        ReconstructConfig(bundle="wts.h5.zip", data="test.npz", output_dir="out", **override)


def test_the_reconstruct_commands_fit_overrides_reach_the_fit_under_its_own_names():
    """Each ``offset_fit_*`` override of the command replaces the bundle's recorded setting of the
    same name; those left out keep the bundle's."""
    rc = ReconstructConfig(bundle="wts.h5.zip", data="test.npz", output_dir="out", offset_fit_steps=6,
                           offset_fit_amplitude_tv=0.0)
    recorded = OffsetFit(steps=200, order=3, average=0.5, phase_tv=2.0, amplitude_tv=2.0)
    fit = recorded.overridden(**rc.fit_overrides())
    assert (fit.steps, fit.amplitude_tv) == (6, 0.0)
    assert (fit.order, fit.average, fit.phase_tv) == (3, 0.5, 2.0)


def test_defaults_live_in_the_schema_once():
    cfg = validate(compose_config([]))
    assert isinstance(cfg.model, PinnConfig)
    assert cfg.model.width == PinnConfig().width  # the YAML repeats no default
    sup = validate(compose_config(["model=supervised", "gridsize=1"])).model
    assert isinstance(sup, SupervisedConfig) and sup.separate_decoders


def test_compare_needs_runs_or_a_sweep():
    from ptylab.config import CompareConfig

    with pytest.raises(ConfigError, match=r"runs=\[\]: must be a list of run directories .* or give a sweep"):
        CompareConfig(output_dir="out")
    assert CompareConfig(sweep="a/sweep", output_dir="out").runs == []


@pytest.mark.parametrize("gridsize", [1, 2, 3])
def test_every_gridsize_runs_on_its_default_neighbours_and_a_set_value_wins(gridsize):
    """``model.neighbours`` left null gives each gridsize a K its groups can be drawn from (a
    ``gridsize=1,2,3`` sweep needs no second key); a value the user sets is used as set."""
    typed = validate(compose_config([f"gridsize={gridsize}"]))
    assert typed.model.neighbours is None  # the snapshot keeps "the gridsize's default", not a number
    assert typed.model.neighbours_at(gridsize) >= gridsize**2 - 1
    assert validate(compose_config([f"gridsize={gridsize}", "model.neighbours=12"])).model.neighbours_at(gridsize) == 12


@pytest.mark.parametrize("override, needle", [
    ("++trainer.max_step=100", "did you mean trainer.max_steps?"),  # ++ lets any key through to the Trainer
    ("++trainer.logger=false", "logger=csv or logger=tensorboard"),  # the job passes its own loggers
])
def test_a_trainer_key_lightning_would_refuse_is_refused_by_the_preflight(override, needle, capsys):
    """Such a key used to fail every job of a sweep at its Trainer, after the job's data were made."""
    with pytest.raises(SystemExit) as info:
        preflight("train", ["-m", "dose=1000,10000", override])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: trainer.{override[10:].split('=')[0]}") and needle in line
    validate(compose_config(["++trainer.limit_train_batches=5", "++trainer.gradient_clip_val=1.0"]))  # real ones pass


def test_config_error_is_a_package_error():
    assert issubclass(ConfigError, PtylabError)


@pytest.mark.parametrize("args", [
    ["model=supervised", "gridsize=1", "model.probe_trainable=true"],
    ["-m", "dose=1000,-5"],
])
def test_preflight_exits_2_with_one_error_line(args, capsys):
    with pytest.raises(SystemExit) as info:
        preflight("train", args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_train_help_shows_how_to_run_and_the_real_choices(tmp_path):
    res = run_script(["train.py", "--help"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "python train.py dose=1000 view=dense gridsize=2" in res.stdout  # the header's first example
    assert "model: pinn, supervised" in res.stdout.splitlines()  # configs, not their schemas
    assert "++trainer.<name>=<value>" in res.stdout  # the footer: the Trainer's pass-through


def test_train_script_refuses_bad_input_before_any_work(tmp_path):
    res = run_script(["train.py", "model.object_support=centre", f"paths.output_root={tmp_path}"], cwd=ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().startswith("error: ") and "Traceback" not in res.stderr
    assert "center, full" in res.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize("script, args, needle", [
    ("scripts/simulate.py", ["dose=-1", "output_dir=OUT"], "dose=-1.0"),
    ("scripts/reconstruct.py", ["bundle=missing.zip", "data=missing.npz", "output_dir=OUT"], "missing.zip"),
    ("scripts/reproduce.py", ["run_dir=does/not/exist"], "does/not/exist"),
    ("scripts/compare.py", ["sweep=TMP", "output_dir=OUT"], "no job directory in it"),  # an empty directory
    ("scripts/study_report.py", ["TMP", "output_dir=OUT"], "no training_manifest.json"),  # an empty directory
])
def test_scripts_answer_bad_input_with_one_error_line(tmp_path, script, args, needle):
    args = [a.replace("OUT", str(tmp_path / "out")).replace("TMP", str(tmp_path)) for a in args]
    res = run_script([script, *args], cwd=ROOT)
    assert res.returncode == 2, (res.stdout[-1000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1]
    assert "Traceback" not in res.stderr
    # refused before any result was written (Hydra's commands keep their config snapshot and log)
    out = tmp_path / "out"
    assert not [p for p in out.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: trainer=gpu runs here")
def test_a_gpu_trainer_is_refused_before_any_work_where_torch_finds_no_gpu(tmp_path, capsys):
    """trainer=gpu on a CPU-only machine: the command line refuses it in one line before Hydra
    starts, and a job started another way (reproduce, a test) fails at once with that message,
    before its data are made. Lightning's own "No supported gpu backend found!" came after them."""
    assert validate(compose_config(["trainer=gpu"])).trainer["accelerator"] == "gpu"  # valid, just not here
    with pytest.raises(SystemExit) as info:
        preflight("train", ["trainer=gpu"])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: trainer.accelerator=gpu") and "use trainer=cpu" in line
    cfg = compose_config(["trainer=gpu", *SMALL_OVERRIDES, f"paths.cache_dir={tmp_path / 'cache'}"])
    record = run_job(cfg, tmp_path / "run")
    assert record.status == Status.failed and "finds none on this machine" in record.error
    assert not (tmp_path / "cache").exists()  # no data were made


def test_a_missing_dataset_file_is_refused_before_any_work_once_for_a_sweep(tmp_path, capsys):
    """A typo in a file path: one line naming the key and the path, exit 2, before any run
    directory exists; in a sweep, before its first job (each used to fail on its own)."""
    present = tmp_path / "test.npz"
    present.write_bytes(b"")  # exists: only the missing key is named
    args = ["-m", "dose=1000,10000", "dataset=npz", f"dataset.train_file={tmp_path / 'trian.npz'}",
            f"dataset.test_file={present}", f"paths.output_root={tmp_path / 'out'}"]
    with pytest.raises(SystemExit) as info:
        preflight("train", args)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: dataset.train_file={tmp_path / 'trian.npz'}: expected an existing")
    assert "found no such file" in line
    with pytest.raises(SystemExit):
        preflight("train", ["dataset=npz", f"dataset.train_file={present}", f"dataset.test_file={tmp_path}"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: dataset.test_file={tmp_path}: expected an existing") and "found a directory" in line
    assert not (tmp_path / "out").exists()
