#!/usr/bin/env bash
# On the GPU machine, in one call of at most BUDGET_S seconds (default 480):
#   1. ViT-S/16 and ViT-B/16 SplitMask and BEiT steps at batch 256 in bf16 on LibTorch-CUDA
#      (ATen's kernels), then the PyTorch reference on the same configurations, eager, then
#      compiled (ViT-S);
#   2. a minute of real `trainer pretrain` (LibTorch, bf16, ViT-S/16 at 224 px, device
#      tokenizer) from shards the carried pipeline prepares out of 1,200 real Imagenette
#      JPEGs, with the loader's wait per step; with two GPUs, the same on --devices cuda:0,1;
#   3. CubeCL (burn's own CUDA kernels) on what time is left: its first step compiles and
#      autotunes for minutes, so it goes last;
#   4. around them, the bf16 device tokenizer's targets against the host's f32 tokenizer on
#      256 real images (LibTorch first, CubeCL last).
# Prints img/s, peak memory and each ratio against the reference; everything lands in $OUT.
# Usage: OUT=<dir> bash bench/gpu/carry/run_device.sh
# Smoke test of the script's plumbing on a CPU machine (LibTorch on the CPU, tiny sizes):
#   SMOKE=1 TRAINER=target/release/trainer PIPELINE=target/release/pipeline RECIPES=datasets \
#     MINI=<a staged imagenette-mini> OUT=/tmp/x bash bench/gpu/run_device.sh
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"; mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-480}"; START=$(date +%s)
SMOKE="${SMOKE:-}"
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
# burn's autotune results persist here, so a rerun skips most of the first-step cost.
export CUBECL_CACHE_DIR="${CUBECL_CACHE_DIR:-$OUT/cubecl-cache}"
RES="$OUT/results.jsonl"; LOG="$OUT/log.txt"; : > "$RES"; : > "$LOG"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
log() { echo "$*" | tee -a "$LOG"; }

# The binaries travel xz-compressed (build.sh); unpack them once.
for bin in trainer pipeline; do
  if [ -f "$HERE/$bin.xz" ] && [ ! -x "$HERE/$bin" ]; then xz -dkf "$HERE/$bin.xz" && chmod +x "$HERE/$bin"; fi
done
TRAINER="${TRAINER:-$HERE/trainer}"; PIPELINE="${PIPELINE:-$HERE/pipeline}"
RECIPES="${RECIPES:-$HERE/datasets}"; MINI="${MINI:-$HERE/imagenette-mini}"

if [ -n "$SMOKE" ]; then
  DEVICE=cpu; GPUS=0; BATCH=8; SMALL=cpu-tiny; BASE=cpu-tiny; PRETRAIN_S=20
else
  DEVICE=cuda; BATCH=256; SMALL=small; BASE=base; PRETRAIN_S=60
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
  GPUS=$(nvidia-smi --list-gpus | wc -l)
fi

# Peak GPU memory of a command, by polling nvidia-smi (burn 0.21 has no allocator statistics).
peak_mem() {
  [ -n "$SMOKE" ] && { "$@"; return; }
  local f; f=$(mktemp); ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$f"; sleep 0.5; done ) &
  local poll=$!
  "$@"; local rc=$?
  kill $poll 2>/dev/null; wait $poll 2>/dev/null
  log "peak_mem_mib $(sort -n "$f" | tail -1)"
  return $rc
}

# The LibTorch rows load the GPU machine's own libtorch: only a torch 2.9 (what tch 0.22 was
# built against) will do.
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib")) if torch.__version__.startswith("2.9.") else None' 2>/dev/null | grep -v None || true)
export LD_LIBRARY_PATH="${TORCH_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

capped() {  # capped CAP -> the cap, less if the budget is nearly spent; 0 to skip
  local cap=$1; (( cap > $(left) )) && cap=$(left)
  (( cap < 20 )) && cap=0
  echo "$cap"
}

ours() {  # ours METHOD MODEL CAP BACKEND
  local cap; cap=$(capped "$3")
  (( cap == 0 )) && { log "SKIP ours $1 $2 $4: budget spent"; return; }
  if [ "$4" = tch ] && [ -z "$TORCH_LIB" ] && [ -z "$SMOKE" ]; then log "SKIP ours $1 $2 tch: no torch 2.9 here"; return; fi
  log "== ours $1 $2 $4 (timeout ${cap}s)"
  peak_mem timeout -k 5 "$cap" "$TRAINER" bench --device "$DEVICE" --backend "$4" --precision bf16 --method "$1" \
    --model "$2" --batch-size "$BATCH" --warmup 3 --steps 20 >> "$RES" 2>> "$LOG"
  log "   rc=$?"
}

theirs() {  # theirs METHOD MODEL CAP [--compile]
  local cap; cap=$(capped "$3")
  (( cap == 0 )) && { log "SKIP torch $1 $2 ${4:-}: budget spent"; return; }
  [ -n "$SMOKE" ] && { log "SKIP torch $1 $2: smoke test"; return; }
  log "== torch $1 $2 ${4:-eager} (timeout ${cap}s)"
  timeout -k 5 "$cap" python3 "$HERE/bench_splitmask.py" --model "$2" --method "$1" --batch "$BATCH" --steps 20 \
    --warmup 5 ${4:-} >> "$RES" 2>> "$LOG"
  log "   rc=$?"
}

# Shards and a random-projection vocabulary from the carried JPEGs (16 cores: seconds).
prepare() {
  local data="$OUT/imagenette-mini"
  [ -f "$data/manifest.json" ] && return 0
  log "== prepare $data"
  "$PIPELINE" prepare --dataset imagenette --recipes "$RECIPES" --data-dir "$MINI" \
    --out "$data" --no-progress >> "$LOG" 2>&1 || [ $? -eq 2 ] || return 1
  "$PIPELINE" vocab build --data "$data" --kind random-projection --size 8192 >> "$LOG" 2>&1
}

pretrain() {  # pretrain NAME CAP [--devices LIST] : a real run, stopped by its time limit
  local name=$1 cap; cap=$(capped "$2"); shift 2
  (( cap == 0 )) && { log "SKIP pretrain $name: budget spent"; return; }
  if [ -z "$SMOKE" ] && [ -z "$TORCH_LIB" ]; then log "SKIP pretrain $name: no torch 2.9 here"; return; fi
  prepare || { log "prepare failed"; return; }
  local data="$OUT/imagenette-mini" run="$OUT/pretrain-$name"
  rm -rf "$run"
  log "== pretrain $name (${cap}s)"
  timeout -s INT -k 30 "$cap" "$TRAINER" --quiet pretrain --recipes "$RECIPES" --data "$data" --out "$run" \
    --vocab "$data"/vocab-random_projection-8192-s0.safetensors --method splitmask --model "$SMALL" \
    --batch-size "$BATCH" --device "$DEVICE" --backend tch --precision bf16 --epochs 1000 --max-steps 100000 \
    --log-every 5 --checkpoint-every 100000 "$@" >> "$LOG" 2>&1
  log "   rc=$? (124 or 130: stopped by the time limit, as planned)"
  python3 - "$run/metrics.jsonl" "$name" >> "$RES" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steady = rows[1:] or rows  # the first window holds start-up
ips = [r.get("images_per_s") for r in steady if r.get("images_per_s")]
wait = [r.get("data_wait_s") for r in steady if r.get("data_wait_s") is not None]
print(json.dumps({"impl_name": "burn-tch-pretrain", "run": sys.argv[2], "logged": len(rows),
                  "images_per_s": sum(ips) / len(ips) if ips else None,
                  "data_wait_s_per_window": sum(wait) / len(wait) if wait else None,
                  "last": rows[-1] if rows else None}))
PY
}

# The bf16 device tokenizer's targets against the host's f32 tokenizer (near-ties only).
targets() {  # targets BACKEND
  local cap; cap=$(capped 60)
  (( cap == 0 )) && { log "SKIP targets $1: budget spent"; return; }
  if [ "$1" = tch ] && [ -z "$TORCH_LIB" ] && [ -z "$SMOKE" ]; then log "SKIP targets tch: no torch 2.9 here"; return; fi
  prepare || { log "prepare failed"; return; }
  local data="$OUT/imagenette-mini"
  log "== targets $1 (timeout ${cap}s)"
  timeout -k 5 "$cap" "$TRAINER" bench-targets --data "$data" --vocab "$data"/vocab-random_projection-8192-s0.safetensors \
    --images 256 --device "$DEVICE" --backend "$1" --precision bf16 >> "$RES" 2>> "$LOG"
  log "   rc=$? (1: targets differ beyond near-ties)"
}

targets tch
ours splitmask "$SMALL" 60 tch
ours beit "$SMALL" 45 tch
ours splitmask "$BASE" 60 tch
ours beit "$BASE" 60 tch
theirs splitmask small 45
theirs beit small 45
theirs splitmask base 45
theirs beit base 45
pretrain one $(( PRETRAIN_S + 30 ))
(( GPUS >= 2 )) && pretrain two $(( PRETRAIN_S + 30 )) --devices cuda:0,1
theirs splitmask small 90 --compile
theirs beit small 90 --compile
ours splitmask "$SMALL" 240 native
ours beit "$SMALL" 120 native
targets native
log "== total $(( $(date +%s) - START ))s"
python3 - "$RES" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
def key(r): return (r.get("method"), r.get("model"))
ours = [r for r in rows if str(r.get("impl_name", "")).startswith("burn") and r.get("method")]
for r in rows:
    if str(r.get("impl_name", "")).startswith("burn"):
        continue
    t = r.get("img_per_s") or r.get("images_per_s")
    for o in (o for o in ours if key(o) == key(r)):
        if t:
            print(f"{key(r)}: {o['impl_name']} {o['images_per_s']:.0f} img/s vs torch"
                  f"{' compiled' if r.get('compile') else ' eager'} {t:.0f} img/s: {o['images_per_s'] / t:.2f}x")
for r in rows:
    if "not_near_ties" in r:
        print(f"targets {r['impl_name']}: {r['differ']} of {r['tokens']} differ from the host's, "
              f"{r['not_near_ties']} beyond near-ties")
    if r.get("impl_name") == "burn-tch-pretrain":
        print(f"pretrain {r['run']}: {r['images_per_s']} img/s, loader wait {r['data_wait_s_per_window']} s per logged window")
PY
cat "$RES"
