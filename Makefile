# Self-documenting Makefile: `make help` lists every target with its `##` comment.
PY ?= python
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: ## install torch==2.13.0 first (CPU build here, CUDA build on a GPU box), then this project
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"

test: ## every CPU test, slow end-to-end ones included (what CI runs; ~3 min on 2 cores)
	$(PY) -m pytest -q -m "not gpu"

test-fast: ## the quick suite while developing (no slow end-to-end tests; ~1.5 min)
	$(PY) -m pytest -q -m "not slow and not gpu"

lint: ## ruff
	$(PY) -m ruff check .

synthetic: ## write synthetic GranD-f val/test into outputs/synthetic
	$(PY) scripts/make_synthetic.py --out outputs/synthetic

tables: ## render outputs/tables/table{1,2,3,4}.{md,tex,csv} from every metrics.json under outputs/runs
	$(PY) -m eval.tables --runs outputs/runs --out outputs/tables

bench: ## benchmarks (medians over repeats): evaluator speed, ALTP SLIC paths, pruner overhead + prefill vs FLOPs
	$(PY) scripts/bench_eval.py
	$(PY) scripts/bench_altp.py
	$(PY) scripts/bench_pruning.py

bench-gpu: ## full-size GLaMM and OMG-LLaVA speed with random weights (needs a CUDA GPU): prefill vs FLOPs, time to first token (ALTP with and without its SLIC, beside FastV)
	$(PY) scripts/bench_glamm.py
	$(PY) scripts/bench_omg_llava.py

clean: ## remove caches (outputs/ is kept; use clean-outputs)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-outputs: ## delete everything runs wrote under outputs/
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +

.PHONY: help install test test-fast lint synthetic tables bench bench-gpu clean clean-outputs
