# Two commands: `make demo` and `make test`. Each creates/refreshes the virtualenv, installs viva, and runs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Reinstall when the project's metadata or the constraints change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[ray,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/viva data generate --out $(DEMO_OUT)/pairs --num 12 --seed 0 --workers 2 --shard-size 12 --overwrite
	$(BIN)/viva data show $(DEMO_OUT)/pairs --index 0 -o $(DEMO_OUT)/preview.png
	$(BIN)/viva data show $(DEMO_OUT)/pairs --index 0 -o $(DEMO_OUT)/preview.gif
	@echo "demo: preview written to $(DEMO_OUT)/preview.png and $(DEMO_OUT)/preview.gif"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_verifier.py
	$(BIN)/python benchmarks/bench_dit.py
	$(BIN)/python benchmarks/bench_edit.py
	$(BIN)/python benchmarks/bench_sft.py

clean:
	rm -rf $(VENV) outputs
