#!/usr/bin/env bash
# The localisation re-check of issue #20: the patching sweeps behind README's "where the answer is
# restored" table, on each training seed of the default set (seed 0 = the shipped model; seeds 1, 2
# from `bash bench/train_defaults.sh runs/defaults "1 2"`), with the evidence-standard defaults
# (denoising and noising, only pairs answered on both prompts, 95% intervals, trivial positions apart).
#   INTERP_SEEDS_DIR=runs/defaults bash bench/localisation_seeds.sh OUTDIR [DEVICE]
# The three seeds run as three processes at once; then `python bench/localisation_table.py OUTDIR`
# counts, for each claim, how many seeds show it. SEEDS, MODELS, N (pairs) and LAYERS (e.g. 0:3) narrow
# the sweep (on a CPU: SEEDS="1 2" MODELS=gdn100 N=64 LAYERS=0:3 ... cpu).
set -uo pipefail
OUT=${1:-runs/localisation}
DEV=${2:-cuda}
mkdir -p "$OUT"
for S in ${SEEDS:-0 1 2}; do
  (for M in ${MODELS:-gdn75 gdn100 transformer}; do
     for T in mqar state_recall; do
       SITES="--site mixer_out"; [ "$M" != transformer ] && SITES="$SITES --site rec.state"
       python3 -m interp.cli patch --model "$M@seed$S" --task $T $SITES ${LAYERS:+--layer $LAYERS} --n ${N:-256} --device "$DEV" \
         --out "$OUT" --top 5 > "$OUT/$M@seed${S}_$T.log" 2>&1 || echo "FAILED: $M@seed$S $T (see its log)"
     done
   done) &
done
wait
