# terraloom: two commands. `make demo` runs the whole mission on the embedded synthetic
# world; `make test` runs the test suite. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CI and laptops have no GPU: install torch first so a local CPU wheel (pip find-links)
# or an already-satisfied torch is used. Users with GPUs override TORCH_SPEC or preinstall torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist loadfile --timeout 1800
DEMO_OUT ?= demo_out

.PHONY: demo test lint format typecheck schemas clean install

$(BIN)/.installed: pyproject.toml .importlinter
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,test,ee,bench,publish]"
	touch $@

# terratorch's TerraMind model files, for the interop parity tests (read from the wheel at
# test time, never installed: terratorch's own dependencies are not needed). Fetched once here,
# so nothing is downloaded during the tests.
TT_WHEEL := .whl/.terratorch-1.2.11
$(TT_WHEEL): $(BIN)/.installed
	$(BIN)/python -m pip download --quiet --no-deps "terratorch==1.2.11" -d .whl
	touch $@

install: $(BIN)/.installed $(TT_WHEEL)

demo: $(BIN)/.installed
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/python -m terraloom.orchestration --out $(DEMO_OUT)

test: $(BIN)/.installed $(TT_WHEEL)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# mypy cannot follow setuptools' editable import hook, so it reads the packages through a link
# tree that spells the installed names (build/typecheck/terraloom/<stage> -> <stage>).
STAGES := schemas storage render pipeline tokenize_jobs model orchestration
typecheck: $(BIN)/.installed
	@mkdir -p build/typecheck/terraloom
	@for s in $(STAGES); do ln -sfn ../../../$$s build/typecheck/terraloom/$$s; done
	$(BIN)/mypy

schemas: $(BIN)/.installed
	$(BIN)/python -m terraloom.schemas export

clean:
	rm -rf $(VENV) $(DEMO_OUT) build/typecheck .pytest_cache .mypy_cache .ruff_cache
