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

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## the main job end to end (local Ray, synthetic data, small preset)
	$(BIN)/egecmp demo $(ARGS)

test: $(STAMP)  ## the whole suite, what CI runs (`gpu` tests skip themselves without CUDA)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)  ## the quick tier for development: the `slow` end-to-end tests deselected
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)  ## all benchmarks -> results/
	$(BIN)/egecmp bench all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
