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

ours() {  # ours METHOD MODEL CAP
  local cap=$3; (( cap > $(left) )) && cap=$(left)
  (( cap < 20 )) && { echo "SKIP ours $1 $2" | tee -a "$LOG"; return; }
  echo "== ours $1 $2 (timeout ${cap}s)" | tee -a "$LOG"
  peak_mem timeout -k 5 "$cap" "$HERE/trainer" bench --device cuda --precision bf16 --method "$1" --model "$2" \
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
ours beit small 150
theirs beit small 60
ours splitmask base 150
theirs splitmask base 60
echo "== total $(( $(date +%s) - START ))s" | tee -a "$LOG"
python3 - "$RES" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
def key(r): return (r.get("method"), r.get("model"))
ours = {key(r): r for r in rows if r.get("impl_name") == "burn"}
for r in rows:
    if r.get("impl_name") == "burn":
        continue
    o = ours.get(key(r))
    t = r.get("img_per_s") or r.get("images_per_s")
    if o and t:
        print(f"{key(r)}: burn {o['images_per_s']:.0f} img/s vs torch {t:.0f} img/s: {o['images_per_s'] / t:.2f}x")
PY
cat "$RES"
