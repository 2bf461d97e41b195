#!/usr/bin/env bash
# Builds the CUDA trainer on this (CPU-only) machine and stages what the GPU machine needs in
# bench/gpu/carry/: the binary, our device script and a copy of the PyTorch reference.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p trainer --features cuda
mkdir -p bench/gpu/carry
cp target/release/trainer bench/gpu/carry/trainer
cp ../shared/anchors/torch_ref/bench_splitmask.py bench/gpu/carry/
cp bench/gpu/run_device.sh bench/gpu/carry/
echo "staged bench/gpu/carry ($(du -sh bench/gpu/carry | cut -f1))"
