# repltap: every target builds .venv itself on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell scripts/find-python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test lint bench demo clean fuzz soak

help:
	@echo "make test   - create .venv, install repltap with its test extra, run the test suite"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - benchmarks (ratios against a baseline measured in the same run)"
	@echo "make demo   - the main job on the built-in reference server"
	@echo "make fuzz   - fuzz the decoders for FUZZ_SECONDS (60) and grow tests/fuzz/corpus"
	@echo "make soak   - SOAK_MINUTES (30) of mixed sync traffic with faults; memory and events checked"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python >= 3.12 found; see scripts/find-python" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check addons tests bench
	$(BIN)/ruff format --check addons tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(STAMP)
	$(BIN)/python -m repltap.sim.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Fuzz the decoders for FUZZ_SECONDS and grow tests/fuzz/corpus/ (atheris if it installs,
# Hypothesis otherwise); tests/fuzz/test_corpus.py replays the corpus in `make test`.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet 'atheris>=2.3' || echo "atheris cannot be installed: fuzzing with Hypothesis"
	$(BIN)/python tests/fuzz/fuzz_decode.py --seconds $(FUZZ_SECONDS)

# Mixed sync traffic with faults through a real mitmdump for SOAK_MINUTES; never part of CI.
SOAK_MINUTES ?= 30
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)
