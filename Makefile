# One entry point. `make test` sets up .venv and runs the tests; `make demo` runs the main job.
PYTHON ?= python3
VENV ?= .venv
# The CPU build lies on the CI/dev machines' disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
SPIDER_DIR ?= $(abspath ../shared/spider)
export SPIDER_DIR
BIN := $(VENV)/bin

.PHONY: setup test test-all demo bench image clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# The main job on its embedded default: local Ray, local storage, the offline model, real Spider.
demo: setup
	$(BIN)/ray-spider setup-model
	rm -rf runs/sweeps/sweep-smoke-cpu
	$(BIN)/ray-spider sweep sweeps/sweep_smoke_cpu.yaml storage=runs/sweeps
	$(BIN)/ray-spider best runs/sweeps/sweep-smoke-cpu --out runs/demo/best_adapter

bench: setup
	$(BIN)/python bench/bench_eval.py

# Builds the Dockerfile on a local CPU base and checks the image (buildah/podman, root; minutes; not in CI).
image:
	deploy/build_image.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
