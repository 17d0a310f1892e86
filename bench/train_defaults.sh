#!/usr/bin/env bash
# Train the shipped default set (12 layers, d=128, matched parameter count) on one GPU, all three
# in parallel. Usage: bash bench/train_defaults.sh OUTDIR
# The scans use the pure-torch reference path: fla 0.6.0 refuses its gated-chunk backward on
# Hopper with Triton < 3.7.1 (its issue #640), which is what the GPU host has.
set -euo pipefail
OUT=${1:-runs/defaults}
mkdir -p "$OUT"
for L in transformer gdn75 gdn100; do
  python3 -m interp.cli train --layout $L --task mqar --task state_recall --steps 5000 --batch-size 64 \
    --lr 3e-3 --warmup 200 --eval-every 1000 --save-every 1000 --match-params transformer \
    --scan-backend reference --device cuda --seed 0 --time-limit 8 --out $OUT/$L > $OUT.$L.log 2>&1 &
done
wait
