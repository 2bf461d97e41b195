#!/usr/bin/env bash
# Builds the CUDA trainer on this (CPU-only) machine and stages what the GPU machine needs in
# bench/gpu/carry/: the binary, our device script and a copy of the PyTorch reference.
set -euo pipefail
cd "$(dirname "$0")/../.."
# One binary with both GPU backends: CubeCL (--backend native) and LibTorch (--backend tch).
make venv
LIBTORCH="$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" \
  cargo build --release -p trainer --features cuda,tch
mkdir -p bench/gpu/carry
cp target/release/trainer bench/gpu/carry/trainer
cp ../shared/anchors/torch_ref/bench_splitmask.py bench/gpu/carry/
cp bench/gpu/run_device.sh bench/gpu/carry/
echo "staged bench/gpu/carry ($(du -sh bench/gpu/carry | cut -f1))"
