# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-quick ptychi clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned exactly: this version installs from a local CPU wheel.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) train.py

# Two pytest-xdist workers, one thread each (torch and its job subprocesses read OMP_NUM_THREADS):
# half a test's time is starting Python and importing torch and Lightning, one core's work, so two
# at once nearly halve the suite; whole files per worker, so a module's fixtures run once
# (2026-12-02: 4 min 24 s against about 6 min 45 s serially; docs/decisions.md).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests train.py
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) scripts/benchmark.py

bench-quick: $(STAMP)
	$(PY) scripts/benchmark.py quick=true

# Optional pty-chi environment for the LSQML reference (torch 2.14.1 + torchvision 0.29.1 from local wheels).
# The base pin (torch==2.13.0) cannot coexist with it, so the project goes in with --no-deps after
# its other dependencies, read from pyproject.toml without the torch pin.
.venv-ptychi/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-ptychi
	$(PYTHON) scripts/requirements_without_torch.py > .venv-ptychi/requirements.txt
	.venv-ptychi/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 'ptychi>=2.2' \
		-r .venv-ptychi/requirements.txt
	.venv-ptychi/bin/python -m pip install --quiet --no-deps -e .
	touch .venv-ptychi/.installed

ptychi: .venv-ptychi/.installed

clean:
	rm -rf $(VENV) .venv-ptychi
