# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv when it is missing. torch goes in first: pinned to the build this
# machine kind ships (CPU wheel here), so nothing pulls a multi-GB CUDA build on top of it.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## the main job end to end (local Ray, synthetic data, small preset)
	$(BIN)/egecmp demo $(ARGS)

test: $(STAMP)  ## the test suite CI runs (the `slow` 60 s load test deselected)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP)  ## everything, the slow tests included
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)  ## all benchmarks -> results/
	$(BIN)/egecmp bench all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
