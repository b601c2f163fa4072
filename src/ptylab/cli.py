"""One way in for every entry point: ``key=value`` overrides, one ``error:`` line and exit 2 on bad input.

Hydra entry points (train, simulate, compare, reconstruct) are checked here before Hydra starts:
the config is composed with the same overrides (every job of a ``-m`` sweep, up to a limit) and
instantiated as its schema, so a misspelt key, a key of another model or dataset kind, a wrong
choice or an out-of-range value is refused at once, not after a sweep's jobs have queued; so is
a GPU trainer on a machine where torch finds no CUDA device.
Entry points without Hydra's machinery (reproduce, study report, benchmark) parse the same
``key=value`` syntax into their own typed schema with ``parse_overrides``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from omegaconf import OmegaConf

from .config import FileDatasetConfig, TrainConfig, override_key, require_trainer_device, validate
from .errors import ConfigError, PtylabError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MAX_PREFLIGHT_JOBS = 256
T = TypeVar("T")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def require_path(key: str, value: str | Path, directory: bool = False) -> Path:
    """The path given as ``key=value``; one error line and exit 2 when it is not an existing file
    (or directory). Commands call it before their slow imports, and the preflight for a file
    dataset's files, so a typo is answered at once, before any run directory."""
    path = Path(value)
    wanted = "directory" if directory else "file"
    if not (path.is_dir() if directory else path.is_file()):
        found = "a directory" if path.is_dir() else "a file" if path.is_file() else f"no such {wanted}"
        fail(f"{key}={value}: expected an existing {wanted}; found {found}")
    return path


def _job_overrides(args: Sequence[str]) -> list[list[str]]:
    """The override list of each job a command line launches (one unless ``-m``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") for a in args)
    plain: list[str] = [a for a in args
                        if not a.startswith("-") and "=" in a and not override_key(a).startswith("hydra")]
    if not multirun:
        return [plain]
    parsed = OverridesParser.create().parse_overrides(plain)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [str(o.input_line)] for o in parsed]
    return [list(c) for c in itertools.islice(itertools.product(*choices), MAX_PREFLIGHT_JOBS)]


def _explain(exc: Exception) -> str:
    """Hydra's composition message plus its cause (which names the schema and the valid choices)."""
    parts = [str(exc).strip()]
    cause = exc.__cause__
    while cause is not None:
        text = str(cause).strip()
        if text and text not in parts[-1]:
            parts.append(text.splitlines()[0])
        cause = cause.__cause__
    message = "; ".join(p.replace("\n", " ") for p in parts)
    schema = _schema_keys(message)
    return f"{message} (valid keys: {', '.join(schema)})" if schema else message


def _schema_keys(message: str) -> list[str]:
    """The keys of the schema a 'Key ... not in ...Config' message names."""
    from . import config

    for name in dir(config):
        cls = getattr(config, name)
        if dataclasses.is_dataclass(cls) and isinstance(cls, type) and f"not in '{name}'" in message:
            return [f.name for f in dataclasses.fields(cls)]
    return []


def _require_file_pattern_sizes(dataset: FileDatasetConfig) -> None:
    """The files' pattern sizes, read from their probes alone (torch comes with the reader: the job
    imports it next anyway); a file whose probe cannot be read so is left to the job's full read."""
    from .data import pattern_size, require_pattern_sizes

    train_n, test_n = pattern_size(dataset.train_file), pattern_size(dataset.test_file)
    if train_n is not None and test_n is not None:
        require_pattern_sizes(dataset.train_file, train_n, dataset.test_file, test_n)


def preflight(config_name: str, args: Sequence[str] | None = None) -> None:
    """Compose and validate the config of every job the command line would run, and check what each
    needs of this machine (a CUDA device where asked for, the dataset files); exit 2 on the first bad one."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    args = list(sys.argv[1:] if args is None else args)
    if any(a in ("-h", "--help", "--hydra-help", "--info", "-c", "--cfg") or a.startswith("--info") for a in args):
        return
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in _job_overrides(args):
            try:
                typed = validate(compose(config_name, overrides=overrides))
                if isinstance(typed, TrainConfig):
                    require_trainer_device(typed.trainer)
                    if isinstance(typed.dataset, FileDatasetConfig):  # not in validate: paths are this machine's
                        require_path("dataset.train_file", typed.dataset.train_file)
                        require_path("dataset.test_file", typed.dataset.test_file)
                        _require_file_pattern_sizes(typed.dataset)
            except PtylabError as exc:
                fail(f"{exc} [{' '.join(overrides) or 'defaults'}]")
            except (HydraException, OmegaConfBaseException) as exc:
                fail(_explain(exc))


def parse_overrides(schema: type[T], args: Sequence[str], positional: tuple[str, ...] = ()) -> T:
    """``key=value`` arguments (plain words fill ``positional`` keys in order) as a validated ``schema``."""
    dotlist: list[str] = []
    words: list[str] = []
    for a in args:
        (dotlist if "=" in a else words).append(a)
    if len(words) > len(positional):
        fail(f"unexpected argument(s) {words[len(positional):]}; use key=value (keys: "
             f"{', '.join(f.name for f in dataclasses.fields(schema))})")  # type: ignore[arg-type]
    dotlist += [f"{k}={w}" for k, w in zip(positional, words, strict=False)]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(dotlist))
        typed: T = validate(merged)
        return typed
    except ConfigError as exc:
        fail(str(exc))
    except Exception as exc:  # OmegaConf's own messages name the key and the schema
        fail(_explain(exc))


def guarded(main: Callable[[], Any]) -> Any:
    """Run an entry point: package errors become one ``error:`` line and exit 2."""
    try:
        return main()
    except PtylabError as exc:
        fail(str(exc))
