#!/usr/bin/env bash
# Patching heatmaps of the shipped default models, on a GPU host (today's defaults: denoising and
# noising side by side, pairs answered on both prompts, 95% intervals, trivial cells apart):
#   bash bench/patch_figures.sh OUTDIR
# Each command is what a user types; see README "Activation patching". The three-seed re-check of
# README's reading is bench/localisation_seeds.sh (figures/localisation_seeds/).
set -euo pipefail
OUT=${1:-runs/patch_figures}
for M in ${MODELS:-gdn75 gdn100 transformer}; do
  for T in mqar state_recall; do
    SITES="--site resid_pre --site mixer_out"
    [ "$M" != transformer ] && SITES="$SITES --site rec.state"
    python3 -m interp.cli patch --model $M --task $T $SITES --n 256 --device cuda --out "$OUT" --top 10
  done
done
python3 -m interp.cli patch --layer 11 --n 256 --device cuda --out "$OUT" --attribution --top 10
