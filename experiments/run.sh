#!/usr/bin/env bash
# The paper's comparison at CPU scale: pre-train on the target set's train images only (BEiT
# and SplitMask, k-means and random-projection tokenizers), fine-tune each encoder and a
# random-init one with the same recipe, probe the frozen encoders, and write the report.
# Every step resumes: rerunning continues where an interrupted run stopped.
#
# Environment (set by `make experiment`): EXP (dataset recipe), EXP_DIR (runs), EXP_DATA
# (prepared copy), and the sizes below.
set -euo pipefail

EXP=${EXP:-imagenette}
EXP_DIR=${EXP_DIR:-runs/experiment-$EXP}
EXP_DATA=${EXP_DATA:-data/$EXP-96}
SHORT_SIDE=${EXP_SHORT_SIDE:-96}
MODEL=${EXP_MODEL:-cpu-tiny}
VOCAB_SIZE=${EXP_VOCAB_SIZE:-1024}
BATCH=${EXP_BATCH:-64}
PRETRAIN_STEPS=${EXP_PRETRAIN_STEPS:-200}
FINETUNE_STEPS=${EXP_FINETUNE_STEPS:-300}
SEED=${EXP_SEED:-0}
DEVICE=${EXP_DEVICE:-cpu}
PIPELINE=${PIPELINE:-target/release/pipeline}
TRAINER=${TRAINER:-target/release/trainer}

# Seed 0 runs are named <method>-<tokenizer>; other seeds add -s<seed>, so several seeds share
# one EXP_DIR and the report's per-initialization summary spans them.
SUFFIX=""
[ "$SEED" = 0 ] || SUFFIX="-s$SEED"

say() { printf '\n== %s\n' "$*"; }

say "data: $EXP at ${SHORT_SIDE} px -> $EXP_DATA"
# Exit status 2: done, some inputs skipped (listed in the manifest).
"$PIPELINE" prepare --dataset "$EXP" --out "$EXP_DATA" --max-short-side "$SHORT_SIDE" || [ $? -eq 2 ]
for kind in kmeans random-projection; do
  file="$EXP_DATA/vocab-${kind//-/_}-$VOCAB_SIZE-s0.safetensors"
  [ -f "$file" ] || "$PIPELINE" vocab build --data "$EXP_DATA" --kind "$kind" --size "$VOCAB_SIZE" \
    --sample 200000 --iterations 10 --no-progress
done

mkdir -p "$EXP_DIR"
for method in beit splitmask; do
  for kind in kmeans random_projection; do
    run="$EXP_DIR/$method-$kind$SUFFIX"
    say "pre-train $method with the $kind tokenizer -> $run"
    "$TRAINER" pretrain --data "$EXP_DATA" --vocab "$EXP_DATA/vocab-$kind-$VOCAB_SIZE-s0.safetensors" \
      --method "$method" --model "$MODEL" --batch-size "$BATCH" --max-steps "$PRETRAIN_STEPS" \
      --blr 0.2 --warmup-epochs 0.1 --seed "$SEED" --device "$DEVICE" --out "$run" --resume --quiet
    [ -f "$run/results.json" ] || "$TRAINER" eval --run "$run" --train-images 3000 --val-images 1000 \
      --probe-epochs 50 --device "$DEVICE" > /dev/null
  done
done
say "random-init encoder probes"
[ -f "$EXP_DIR/random$SUFFIX/results.json" ] || "$TRAINER" eval --random-init "$MODEL" --data "$EXP_DATA" \
  --out "$EXP_DIR/random$SUFFIX" --train-images 3000 --val-images 1000 --probe-epochs 50 --seed "$SEED" \
  --device "$DEVICE" > /dev/null

finetune() { # <out> [--init <run>]
  local out=$1
  shift
  say "fine-tune -> $out"
  "$TRAINER" finetune --data "$EXP_DATA" "$@" --model "$MODEL" --batch-size "$BATCH" \
    --max-steps "$FINETUNE_STEPS" --blr 2e-3 --warmup-epochs 0.2 --eval-every-epochs 0.5 \
    --eval-images 1000 --seed "$SEED" --device "$DEVICE" --out "$out" --resume --quiet
}
finetune "$EXP_DIR/ft-random$SUFFIX"
for method in beit splitmask; do
  for kind in kmeans random_projection; do
    finetune "$EXP_DIR/ft-$method-$kind$SUFFIX" --init "$EXP_DIR/$method-$kind$SUFFIX"
  done
done

"$TRAINER" report --runs "$EXP_DIR"
cat "$EXP_DIR/report.md"
