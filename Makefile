# splitmask-rs: `make demo` prepares the real Imagenette in ../shared; `make test` runs the tests.
CARGO    ?= cargo
PYTHON   ?= python3
DATASET  ?= imagenette
DATA_DIR ?=
OUT      ?= data/$(DATASET)
ARGS     ?=
# Vocabulary built at the end of `make prepare` (random_projection | random_patches | kmeans).
# Random projection is the tokenizer of the paper's Table 6 models (section 5.5).
VOCAB         ?= random_projection
VOCAB_SIZE    ?= 8192
# VOCAB=kmeans: the paper clusters 3M sampled patches; it states no iteration count (25 is
# faiss's default). Smaller samples build faster: make prepare VOCAB=kmeans KMEANS_SAMPLE=1000000
KMEANS_SAMPLE ?= 3000000
KMEANS_ITERS  ?= 25
PIPELINE := target/release/pipeline
# Pre-training (`make pretrain`): method, ViT preset, device (cpu | cuda) and run folder.
METHOD   ?= splitmask
MODEL    ?= cpu-small
DEVICE   ?= cpu
# Data-parallel devices, one rank each (cpu:N or cuda:0,1,...); BATCH is per device.
DEVICES  ?=
# Several machines, one process each (docs/methods.md, "Several machines"): NODES processes, this one
# NODE_RANK, node 0 at MASTER=host:port, this node's tensor service at NODE_ADDRESS=host:port.
NODES    ?=
NODE_RANK ?=
MASTER   ?=
NODE_ADDRESS ?=
CLUSTER_SECRET_FILE ?=
NODE_FLAGS = $(if $(NODES),--num-nodes $(NODES)) $(if $(NODE_RANK),--node-rank $(NODE_RANK)) \
	$(if $(MASTER),--master $(MASTER)) $(if $(NODE_ADDRESS),--node-address $(NODE_ADDRESS)) \
	$(if $(CLUSTER_SECRET_FILE),--cluster-secret-file $(CLUSTER_SECRET_FILE))
BATCH    ?= 64
RUN      ?= runs/$(DATASET)-$(METHOD)-$(MODEL)-$(VOCAB)
TRAIN_ARGS ?=
TRAINER  := target/release/trainer
# Whose kernels compute: native (burn's: flex on the CPU, CubeCL on CUDA) or tch (LibTorch, on
# DEVICE=cpu or cuda). tch builds against the torch wheel tch 0.22 expects, installed into the
# project's own .venv (`make venv`); the binaries find its libraries through an rpath.
BACKEND  ?= native
VENV     := .venv
TORCH_VERSION := 2.9.0
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)
# torch-sys builds against the wheel's headers and libraries (the wheel's `torch` folder is a
# libtorch tree). PATH stays as it is: the tests' python3 is the one python-deps installed into.
TORCH_DIR = $(firstword $(wildcard $(abspath $(VENV))/lib/python3*/site-packages/torch))
TCH_ENV   = LIBTORCH=$(TORCH_DIR)
TRAINER_FEATURES := $(if $(filter tch,$(BACKEND)),tch,$(if $(filter cuda,$(DEVICE)),cuda))
BACKEND_FLAGS = --device $(DEVICE) --backend $(BACKEND)

.PHONY: all venv build build-trainer prepare images vocab tokenize inspect demo pretrain finetune segment eval visualize report experiment export check-timm check test lint fmt fuzz python-deps bench-ingest bench-kmeans bench-gpu bench-collective bench-train bench-loader

all: build

build:
	$(CARGO) build --release -p pipeline

# Images -> shards, then a vocabulary, then the token grids of every image.
prepare: images vocab tokenize

# Exit status 2 means "done, some inputs skipped" (listed in the manifest): not a failure here.
images: build
	$(PIPELINE) prepare --dataset $(DATASET) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --out $(OUT) $(ARGS) || [ $$? -eq 2 ]

VOCAB_FILE := $(OUT)/vocab-$(VOCAB)-$(VOCAB_SIZE)-s0.safetensors

vocab: build
	@if [ -f $(VOCAB_FILE) ]; then echo "$(VOCAB_FILE) exists (delete it to rebuild)"; else \
	$(PIPELINE) vocab build --data $(OUT) --kind $(subst _,-,$(VOCAB)) --size $(VOCAB_SIZE) --sample $(KMEANS_SAMPLE) --iterations $(KMEANS_ITERS); fi
	$(PIPELINE) vocab inspect --data $(OUT) --vocab $(VOCAB_FILE)

tokenize: build
	$(PIPELINE) tokenize --data $(OUT) --vocab $(VOCAB_FILE)

inspect: build
	$(PIPELINE) inspect $(OUT)

# The demo pre-trains briefly on the CPU; `make pretrain` runs the full schedule. At batch 32 the
# paper's linearly scaled lr (1.5e-3 x 32 / 2048) barely moves in 300 steps, hence --blr 0.2.
DEMO_STEPS ?= 300
demo: prepare inspect
	$(MAKE) pretrain MODEL=cpu-tiny BATCH=32 RUN=runs/demo-$(DATASET) RESUME=1 TRAIN_ARGS="--max-steps $(DEMO_STEPS) --blr 0.2 --warmup-epochs 0.2 --knn-every $(DEMO_STEPS) --knn-images 1000"

# The project's Python environment with the torch wheel (several GB with its CUDA libraries; it
# runs on CPU-only machines too). The stamp names the version, so a new one reinstalls.
venv: $(TORCH_STAMP)
$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	touch $@

# The CUDA build needs no GPU to compile (kernels are JIT-compiled by NVRTC on the GPU host).
build-trainer: $(if $(filter tch,$(BACKEND)),venv)
	$(if $(filter tch,$(BACKEND)),$(TCH_ENV)) $(CARGO) build --release -p trainer $(if $(TRAINER_FEATURES),--features $(TRAINER_FEATURES))

# Pre-train on the prepared dataset in $(OUT) with its $(VOCAB) vocabulary (the recipe's Table 3
# epochs; the paper's settings for the smallest datasets); RESUME=1 continues $(RUN).
# METHOD=beit|splitmask|mae|dino (MAE predicts pixels and DINO matches a teacher: no vocabulary).
pretrain: build-trainer
	$(TRAINER) pretrain --data $(OUT) $(if $(filter mae dino,$(METHOD)),,--vocab $(VOCAB_FILE)) --method $(METHOD) --model $(MODEL) \
		$(BACKEND_FLAGS) $(if $(DEVICES),--devices $(DEVICES)) $(NODE_FLAGS) --batch-size $(BATCH) \
		--out $(RUN) $(if $(RESUME),--resume) $(TRAIN_ARGS)

# Fine-tune a pre-training run (INIT=<run folder>; without INIT: random init, the baseline) with
# Table 9, its regularization sized to the run's length; FT_ARGS="--recipe paper" runs it as written.
FT_RUN   ?= $(if $(INIT),$(INIT)-finetune,runs/$(DATASET)-scratch-$(MODEL))
FT_ARGS  ?=
finetune: build-trainer
	$(TRAINER) finetune --data $(OUT) $(if $(INIT),--init $(INIT),--model $(MODEL)) $(BACKEND_FLAGS) \
		$(if $(DEVICES),--devices $(DEVICES)) $(NODE_FLAGS) \
		--batch-size $(BATCH) --out $(FT_RUN) $(if $(RESUME),--resume) $(FT_ARGS)

# Semantic segmentation (DATASET=camvid, ade20k or segmentation): the recipe's [segment] row
# (BEiT's ADE20k UperNet fine-tuning) from INIT, or from random init; mIoU by sliding window.
SEG_RUN  ?= $(if $(INIT),$(INIT)-segment,runs/$(DATASET)-segment-scratch-$(MODEL))
SEG_ARGS ?=
segment: build-trainer
	$(TRAINER) segment --data $(OUT) $(if $(INIT),--init $(INIT),--model $(MODEL)) $(BACKEND_FLAGS) \
		$(if $(DEVICES),--devices $(DEVICES)) $(NODE_FLAGS) \
		--out $(SEG_RUN) $(if $(RESUME),--resume) $(SEG_ARGS)

# k-NN and per-layer linear probes of a pre-training run's frozen encoder -> $(RUN)/results.json.
eval: build-trainer
	$(TRAINER) eval --run $(RUN) $(BACKEND_FLAGS)

# What $(RUN) predicts for the patches it hides, on 8 eval images -> $(RUN)/reconstructions.png.
visualize: build-trainer
	$(TRAINER) visualize --run $(RUN) --out $(RUN)/reconstructions.png $(BACKEND_FLAGS)

# $(RUN) as a timm export folder ($(RUN)/timm: model.safetensors + config.json): a pre-training
# run's encoder or a fine-tuning run's classifier; timm.create_model("local-dir:$(RUN)/timm", pretrained=True).
export: build-trainer
	$(TRAINER) export --run $(RUN) --out $(RUN)/timm

# Loads that export into timm both ways (local-dir, and architecture + pretrained_cfg_overlay)
# and compares its features (encoder) or logits (classifier) with ours on one input.
# Installs torch + timm (gigabytes): not part of `make test`.
check-timm: build-trainer
	$(PYTHON) -m pip install --quiet --disable-pip-version-check torch timm safetensors
	$(TRAINER) export --run $(RUN) --out $(RUN)/timm --check $(RUN)/timm-check.safetensors
	$(PYTHON) tests/python/timm_check.py $(RUN)/timm $(RUN)/timm-check.safetensors

# report.md and PNG plots of every run folder under RUNS.
RUNS ?= runs
report: build-trainer
	$(TRAINER) report --runs $(RUNS)

# The paper's comparison on a dataset's own images at CPU scale (about 70 minutes per seed on 2
# cores, more with DINO): BEiT and SplitMask x k-means and random-projection tokenizers, MAE and DINO, vs random init,
# each fine-tuned with `trainer finetune`'s defaults (Table 9 with its regularization sized to
# the run, and LP-FT: the head starts from a linear probe) and probed, evaluated on the recipe's
# split (choices on held-out train rows where that split is `test`).
# Any recipe, your own `folder` included: make experiment EXP=folder DATA_DIR=/path/to/images
# Sizes are EXP_* variables (see experiments/run.sh).
EXP ?= imagenette
experiment: build build-trainer
	EXP=$(EXP) DATA_DIR=$(DATA_DIR) EXP_BACKEND=$(BACKEND) EXP_DEVICE=$(DEVICE) bash experiments/run.sh

python-deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

# The tests run the trainer on flex and on LibTorch's CPU backend in one build (--features
# trainer/tch), so lint and test share it; the default build (no features) is checked too.
TEST_FEATURES := --features trainer/tch
lint: venv
	$(CARGO) fmt --all --check
	$(TCH_ENV) $(CARGO) clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings
	$(CARGO) clippy -p trainer --bins -- -D warnings

# Everything (what .ci/run calls): a test whose ../shared data is absent fails here.
test: python-deps venv lint
	SPLITMASK_REQUIRE_SHARED=1 $(TCH_ENV) $(CARGO) test --workspace $(TEST_FEATURES)

# The day-to-day tier: format, lints and the unit tests on the default (flex) build; no Python,
# no torch download. Absent ../shared data is a skip here.
check:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --lib

fmt:
	$(CARGO) fmt --all

# Coverage-guided fuzzing of every parser (libFuzzer through libfuzzer-sys, on stable Rust: the
# sanitizer-coverage passes are stable codegen flags, so cargo-fuzz and nightly are not needed).
# `make test` runs a fixed number of mutants per target; this runs FUZZ_SECONDS per target.
# The explicit --target keeps the flags off build scripts and proc macros, as cargo-fuzz does.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks
fuzz:
	$(CARGO) run -p fuzz --bin fuzz-seeds -- target/fuzz/corpus
	RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --release -p fuzz --features libfuzzer --bin fuzz \
		--target $(HOST) --target-dir target/fuzz/build
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" \
		FUZZ_BIN=target/fuzz/build/$(HOST)/release/fuzz bash fuzz/run.sh

bench-ingest: build python-deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check pillow
	$(PYTHON) bench/ingest/run.py

# The per-update gradient all-reduce of data-parallel training: burn-collective (flex, threads)
# against torch.distributed gloo (processes) on the same ViT-S-sized gradients.
bench-collective:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check torch
	$(PYTHON) bench/collective/run.py

# Builds the CUDA trainer and the pipeline here and stages bench/gpu/carry/ (stripped, compressed
# binaries, scripts, recipes, 1,200 Imagenette JPEGs; under 64 MiB) for the GPU machine, where
# bench/gpu/run_device.sh runs (see bench/gpu/README.md).
bench-gpu:
	bash bench/gpu/build.sh

# Training steps per second of the trainer on flex and on LibTorch (CPU), and of the PyTorch
# reference (../shared/anchors/torch_ref, eager, f32) on the same configurations, in one run.
BENCH_TRAIN_ARGS ?=
bench-train: venv
	$(VENV)/bin/pip install --quiet --disable-pip-version-check numpy
	$(TCH_ENV) $(CARGO) build --release -p trainer --features tch
	$(VENV)/bin/python bench/train/run.py --trainer $(TRAINER) $(BENCH_TRAIN_ARGS)

# The pre-training input pipeline alone (trainer bench-loader) against torchvision's
# ImageFolder + DataLoader and decode_jpeg on the same JPEG bytes, per core and on all cores.
BENCH_LOADER_ARGS ?=
bench-loader: venv images vocab
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torchvision==0.24.0 pyarrow pillow numpy
	$(TCH_ENV) $(CARGO) build --release -p trainer --features tch
	$(VENV)/bin/python bench/loader/run.py --data $(OUT) --vocab $(VOCAB_FILE) $(BENCH_LOADER_ARGS)

# Needs the prepared dataset (make images). OPENBLAS_* are unset for numpy's fastest kernels.
bench-kmeans: python-deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check faiss-cpu numpy
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) bench/kmeans/run.py --data $(OUT)
