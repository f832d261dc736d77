# Self-documenting Makefile: `make help` lists every target with its `##` comment.
PY ?= python
# where runs write (run.py output_root=...): tables, figures and the report go under it too
OUT ?= outputs
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: ## install torch==2.13.0 first (CPU build here, CUDA build on a GPU box), then this project
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"

test: ## every CPU test, slow end-to-end ones included (what CI runs; 455–677 s on 2 cores, see README)
	$(PY) -m pytest -q -m "not gpu"

test-fast: ## the quick suite while developing (no slow end-to-end tests; ~1.5 min)
	$(PY) -m pytest -q -m "not slow and not gpu"

lint: ## ruff
	$(PY) -m ruff check .

synthetic: ## write synthetic GranD-f val/test into outputs/synthetic
	$(PY) scripts/make_synthetic.py --out outputs/synthetic

tables: ## every metrics.json under $(OUT)/runs -> $(OUT)/tables: table{1,2,3,4}, other_runs (.md/.tex/.csv), fig_*.{png,pdf}
	$(PY) -m eval.tables --runs $(OUT)/runs --out $(OUT)/tables

report: ## $(OUT)/report.md: tables, figures, protocol notes, realism table, the settings of every run
	$(PY) -m eval.report --runs $(OUT)/runs --tables $(OUT)/tables --out $(OUT)/report.md

testbed-report: ## how the tiny model reacts to pruning beside GLaMM (sweep=realism, then outputs/tables/realism.md)
	$(PY) run.py sweep=realism progress=false output_root=$(OUT)
	$(PY) run.py progress=false output_root=$(OUT)
	$(PY) scripts/testbed_report.py --runs $(OUT)/runs --out $(OUT)/tables/realism.md

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
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

.PHONY: help install test test-fast lint synthetic tables report testbed-report bench bench-gpu clean clean-outputs
