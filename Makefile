# Every target does its own set-up: a fresh machine needs only python3 (>= 3.10) and make.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vidiff-installed

.PHONY: setup test lint generate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the local CPU build, so the package's torch range installs nothing more
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# cd-fvd only as the independent I3D the metric tests compare against: its torchvision requirement has no
	# CPU build, and the module the tests import needs only torch
	$(BIN)/python -m pip install -q --no-deps cd-fvd==0.1.1
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check vidiff tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

generate: $(STAMP)
	$(BIN)/vidiff generate --image vidiff/assets/example.png --output example.mp4

clean:
	rm -rf $(VENV) build *.egg-info
