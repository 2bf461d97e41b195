#!/usr/bin/env bash
# Builds the CUDA trainer and the pipeline on this (CPU-only) machine and stages what the GPU
# machine needs in bench/gpu/carry/ (under the device's 64 MiB carry limit): both binaries
# stripped of debug info and xz-compressed, our device script, the PyTorch reference, and
# 1,200 real Imagenette JPEGs (100 train and 20 val per class) for a minute of real
# pre-training from shards.
set -euo pipefail
cd "$(dirname "$0")/../.."
# One binary with both GPU backends: CubeCL (--backend native) and LibTorch (--backend tch).
make venv
LIBTORCH="$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" \
  cargo build --release -p trainer --features cuda,tch
cargo build --release -p pipeline
CARRY=bench/gpu/carry
rm -rf "$CARRY" && mkdir -p "$CARRY"
# The release profile keeps debug info (for perf here); 330 MB of it would not travel.
strip -o "$CARRY/trainer" target/release/trainer
strip -o "$CARRY/pipeline" target/release/pipeline
xz -T0 -6 -f "$CARRY/trainer" "$CARRY/pipeline"  # 32 MB -> 6 MB; run_device.sh unpacks them
cp ../shared/anchors/torch_ref/bench_splitmask.py bench/gpu/run_device.sh "$CARRY/"
cp -r datasets "$CARRY/"  # the recipes pipeline prepare and trainer pretrain read
SRC=../shared/data/imagenette
for split_count in train:100 val:20; do
  split=${split_count%:*} count=${split_count#*:}
  for class in "$SRC/$split"/*/; do
    dest="$CARRY/imagenette-mini/$split/$(basename "$class")"
    mkdir -p "$dest"
    find "$class" -maxdepth 1 -type f | sort | head -n "$count" | xargs -I{} cp {} "$dest/"
  done
done
size_mib=$(( $(du -sb "$CARRY" | cut -f1) / 1048576 ))
echo "staged $CARRY (${size_mib} MiB)"
if (( size_mib >= 64 )); then
  echo "error: $CARRY is ${size_mib} MiB, over the device's 64 MiB carry limit" >&2
  exit 1
fi
