# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both build or refresh .venv so they work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch; override e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." for CUDA.
TORCH_SPEC ?= torch==2.13.0
DATA ?= $(if $(LUMENLM_DATA),$(LUMENLM_DATA),../shared/data)

.PHONY: demo test lint venv clean

$(VENV)/.stamp: pyproject.toml
	@echo "== building .venv (Python venv, $(TORCH_SPEC), lumenlm and its dependencies; about 2 minutes the first time)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	@$(BIN)/pip install -q -e ".[dev]"
	@touch $@
	@echo "== .venv ready: run commands as .venv/bin/lumenlm ... (or: source .venv/bin/activate)"

venv: $(VENV)/.stamp

demo: $(VENV)/.stamp
	LUMENLM_DATA=$(DATA) bash scripts/demo.sh

test: $(VENV)/.stamp
	LUMENLM_DATA=$(DATA) $(BIN)/python -m pytest -q

lint: $(VENV)/.stamp
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
