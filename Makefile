# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo

# Apache Beam has its own environment: its pins (protobuf<7, ...) clash with constraints.txt.
BEAM_VENV  := .venv-beam
BEAM_BIN   := $(BEAM_VENV)/bin
BEAM_STAMP := $(BEAM_VENV)/.installed

.PHONY: install test test-all install-beam test-beam demo bench clean

install: $(STAMP)

# Re-install when the dependency declarations change.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

# Two pytest workers (pytest-xdist): the suite is mostly single-threaded tracing and
# subprocess waits, so two workers on 2 cores take ~10 min where one takes ~13-16.
# --dist loadfile keeps each module on one worker, so a module-scoped fixture (the
# distributed children, the fitted runs) is built once. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
PYTEST := TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST) --durations=15

test-all: install
	$(PYTEST) -m 'slow or not slow'

install-beam: $(BEAM_STAMP)

$(BEAM_STAMP): setup.cfg pyproject.toml constraints-beam.txt
	test -d $(BEAM_VENV) || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BEAM_BIN)/python -m pip install -q -c constraints-beam.txt -e '.[beam,dev]'
	touch $(BEAM_STAMP)

# The Beam tests (scan --runner beam on the multi-process DirectRunner), a few minutes;
# not part of `make test` (see docs/tfx.md, "Environments and tests"). Only their files are
# collected: the other test modules import packages of the main environment.
BEAM_TESTS := tests/test_beam_scan.py

test-beam: install-beam
	TF_CPP_MIN_LOG_LEVEL=2 $(BEAM_BIN)/python -m pytest -q -m beam --durations=5 $(BEAM_TESTS)

# The main job end to end on freshly simulated data (a few minutes on 2 CPU cores).
demo: install
	rm -rf $(DEMO)
	$(BIN)/kerasssl simulate $(DEMO)/data --format three-band --n-lenses 300 --n-nonlenses 200 --size 32 --seed 0 --nan-fraction 0.1
	$(BIN)/kerasssl inspect $(DEMO)/data
	$(BIN)/kerasssl fit $(DEMO)/data --run-dir $(DEMO)/run --config examples/quick.yaml
	@echo "ROC plot: $(CURDIR)/$(DEMO)/run/roc.png"

# Speed benchmarks that finish in minutes on this CPU (numbers are printed, never asserted).
bench: install
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/throughput.py --size 64 --channels 1 --batch 64 --steps 8

clean:
	rm -rf $(VENV) $(BEAM_VENV) build *.egg-info .pytest_cache
