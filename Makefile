# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to the CPU build on local disk, so the project's torch range is
# already satisfied and pip never pulls a multi-GB CUDA build. GPU users: install your CUDA torch
# into the venv first; the range in pyproject.toml accepts it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.slq-installed
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e ".[test,baselines,plot]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/slq demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
