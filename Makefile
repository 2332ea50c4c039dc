# Two commands: `make demo` and `make test`. Each creates/refreshes the virtualenv, installs viva, and runs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: demo test install browser bench reproduce clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Reinstall when the project's metadata or the constraints change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[ray,dev,app]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/viva demo --out $(DEMO_OUT)

# Debian's Chromium for the browser tests (tests/test_app.py, tests/test_eval_report.py drive it with Playwright's Python
# package; Playwright never downloads a browser). Installed with apt when missing and apt can be used (as root);
# otherwise a note, and the browser tests fail under CI / are skipped elsewhere, saying so.
browser:
	@if [ -n "$$VIVA_CHROMIUM" ] || command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser tests (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "warning: apt-get could not install chromium; the browser tests will say so"; \
	else echo "note: no chromium here and no apt-get as root; install chromium for the browser tests"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_verifier.py
	$(BIN)/python benchmarks/bench_dit.py
	$(BIN)/python benchmarks/bench_edit.py
	$(BIN)/python benchmarks/bench_sft.py

# The whole training chain of the bundled model on this machine's CPU (hours; resumable: re-run to go on).
reproduce: $(STAMP)
	VIVA=$(BIN)/viva scripts/train_mini_cpu.sh runs

clean:
	rm -rf $(VENV) outputs
