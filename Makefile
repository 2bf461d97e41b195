# splitmask-rs: `make demo` prepares the real Imagenette in ../shared; `make test` runs the tests.
CARGO    ?= cargo
PYTHON   ?= python3
DATASET  ?= imagenette
DATA_DIR ?=
OUT      ?= data/$(DATASET)
ARGS     ?=
PIPELINE := target/release/pipeline

.PHONY: all build prepare inspect demo test lint fmt python-deps bench-ingest

all: build

build:
	$(CARGO) build --release -p pipeline

# Exit status 2 means "done, some inputs skipped" (listed in the manifest): not a failure here.
prepare: build
	$(PIPELINE) prepare --dataset $(DATASET) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --out $(OUT) $(ARGS) || [ $$? -eq 2 ]

inspect: build
	$(PIPELINE) inspect $(OUT)

demo: prepare inspect

python-deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: python-deps lint
	$(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

bench-ingest: build python-deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check pillow
	$(PYTHON) bench/ingest/run.py
