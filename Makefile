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
# A CPU sweep on easy questions, its best adapter, and the base model without adapter scored on the
# same dev questions, side by side.
DEMO := runs/demo
demo: setup
	$(BIN)/ray-spider setup-model
	rm -rf runs/sweeps/sweep-demo-cpu $(DEMO)
	$(BIN)/ray-spider sweep sweeps/sweep_demo_cpu.yaml storage=runs/sweeps
	$(BIN)/ray-spider best runs/sweeps/sweep-demo-cpu --out $(DEMO)/best_adapter
	$(BIN)/ray-spider predict --config $(DEMO)/best_adapter/config.yaml --out $(DEMO)/baseline lora.enabled=false
	$(BIN)/ray-spider compare $(DEMO)/baseline $(DEMO)/best_adapter/dev_eval --label "base model" --label "best adapter"

bench: setup
	$(BIN)/python bench/bench_eval.py

# Builds the Dockerfile on a local CPU base and checks the image (buildah/podman, root; minutes; not in CI).
image:
	deploy/build_image.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
