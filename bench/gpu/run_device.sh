#!/usr/bin/env bash
# On the GPU machine: our SplitMask/BEiT steps (ViT-S/16, ViT-B/16, batch 256, bf16) and the
# PyTorch reference on the same GPU in the same call; prints img/s, peak memory and the ratio.
# Usage: OUT=<dir> bash bench/gpu/carry/run_device.sh   (BUDGET_S bounds the whole script)
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"; mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-480}"; START=$(date +%s)
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
# burn's autotune results persist here, so a rerun skips most of the first-step cost.
export CUBECL_CACHE_DIR="${CUBECL_CACHE_DIR:-$OUT/cubecl-cache}"
RES="$OUT/results.jsonl"; LOG="$OUT/log.txt"; : > "$RES"; : > "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# Peak GPU memory of a command, by polling nvidia-smi (burn 0.21 has no allocator statistics).
peak_mem() {  # peak_mem CMD... -> runs CMD, appends {"peak_mem_gb": x} to its JSON line
  local f; f=$(mktemp); ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$f"; sleep 0.5; done ) &
  local poll=$!
  "$@"; local rc=$?
  kill $poll 2>/dev/null; wait $poll 2>/dev/null
  echo "peak_mem_mib $(sort -n "$f" | tail -1)" >> "$LOG"
  return $rc
}

# The LibTorch rows load the GPU machine's own libtorch: only a torch 2.9 (what tch 0.22 was
# built against) will do.
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib")) if torch.__version__.startswith("2.9.") else None' 2>/dev/null | grep -v None || true)

ours() {  # ours METHOD MODEL CAP [BACKEND]
  local cap=$3; (( cap > $(left) )) && cap=$(left)
  (( cap < 20 )) && { echo "SKIP ours $1 $2 ${4:-native}" | tee -a "$LOG"; return; }
  if [ "${4:-native}" = tch ] && [ -z "$TORCH_LIB" ]; then echo "SKIP ours $1 $2 tch: no torch 2.9 here" | tee -a "$LOG"; return; fi
  echo "== ours $1 $2 ${4:-native} (timeout ${cap}s)" | tee -a "$LOG"
  LD_LIBRARY_PATH="${TORCH_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  peak_mem timeout -k 5 "$cap" "$HERE/trainer" bench --device cuda --backend "${4:-native}" --precision bf16 --method "$1" --model "$2" \
    --batch-size 256 --warmup 3 --steps 20 >> "$RES" 2>> "$LOG"
  echo "   rc=$?" | tee -a "$LOG"
}

theirs() {  # theirs METHOD MODEL CAP [--compile]
  local cap=$3; (( cap > $(left) )) && cap=$(left)
  (( cap < 20 )) && { echo "SKIP torch $1 $2" | tee -a "$LOG"; return; }
  echo "== torch $1 $2 $4 (timeout ${cap}s)" | tee -a "$LOG"
  timeout -k 5 "$cap" python3 "$HERE/bench_splitmask.py" --model "$2" --method "$1" --batch 256 --steps 20 --warmup 5 ${4:-} >> "$RES" 2>> "$LOG"
  echo "   rc=$?" | tee -a "$LOG"
}

ours splitmask small 240
theirs splitmask small 60
ours splitmask small 120 tch
ours beit small 150
theirs beit small 60
ours beit small 90 tch
ours splitmask base 150
theirs splitmask base 60
echo "== total $(( $(date +%s) - START ))s" | tee -a "$LOG"
python3 - "$RES" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
def key(r): return (r.get("method"), r.get("model"))
ours = [r for r in rows if str(r.get("impl_name", "")).startswith("burn")]
for r in rows:
    if str(r.get("impl_name", "")).startswith("burn"):
        continue
    t = r.get("img_per_s") or r.get("images_per_s")
    for o in (o for o in ours if key(o) == key(r)):
        if t:
            print(f"{key(r)}: {o['impl_name']} {o['images_per_s']:.0f} img/s vs torch{' compiled' if r.get('compile') else ''} {t:.0f} img/s: {o['images_per_s'] / t:.2f}x")
PY
cat "$RES"
