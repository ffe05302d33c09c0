# duplex: `make run` starts the daemon on http://127.0.0.1:8080 (the trained demonstrator,
# checkpoints/demo; ARGS="--checkpoint dummy" for the cpu preset's seeded weights);
# `make test` runs the whole suite. Both install what they need into .venv first.
# Settings: `make run ARGS="--port 9000"`, or DUPLEX_* variables (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a CUDA build of several GB.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[serve,test]'
	touch $(STAMP)

# --compile: about 1.4x faster steps on CPU; the first start compiles for 1-5 minutes
run: install
	$(BIN)/duplex serve --compile $(ARGS)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/duplex bench model-step --preset cpu --threads 1

# on a GPU machine: every GPU test and bench in one run of at most 8 minutes (bench/gpu_check.py)
gpu-check: install
	$(BIN)/duplex bench gpu-check $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
