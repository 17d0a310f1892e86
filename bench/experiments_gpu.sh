#!/usr/bin/env bash
# Full runs of experiments E1-E4 at once on one GPU host (two GPUs; one works too), as their own
# commands with --time-budget, so a call of a limited length stops cleanly and the same call again
# continues from the checkpoints:
#
#   bash bench/experiments_gpu.sh MINUTES [--train-only]      # e.g. 9 --train-only, then 9, 9, ...
#   ONLY="e3_token_loss" bash bench/experiments_gpu.sh 9       # a subset (space-separated names)
#   bash bench/experiments_gpu.sh 9 --train-only --scan-backend auto   # flags after MINUTES reach every experiment
#                                                      # (auto: fla's scans, BENCHMARKS.md section 35; a new ROOT)
#
# Placement: E1 and E4 train and evaluate on cuda:0; E2's 38 runs and E3's probe models are spread over
# all GPUs (--train-devices); E2 evaluates, and E3 trains its text pair and evaluates, on the last GPU. ROOT (default runs/gpu) holds checkpoints
# (ROOT/<experiment>), figures and reports (ROOT/figures/<experiment>) and logs (ROOT/logs).
# With --train-only, an experiment whose runs all finish early is evaluated in the call's time left.
# After a call in which all four finished, E4's throughput table is measured again with the GPU to
# itself (the first measurement shared the GPUs with the other experiments).
# On a host whose copy of .git is not the tree's (a GPU host fed a copy of the working tree), set
# INTERP_GIT_COMMIT=<sha> so that the reports name the commit that ran.
set -uo pipefail
MIN=${1:?usage: bash bench/experiments_gpu.sh MINUTES [--train-only]}; shift
ROOT=${ROOT:-runs/gpu}
mkdir -p "$ROOT/logs" "$ROOT/figures"
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ "$N" -ge 1 ] || { echo "error: no CUDA device" >&2; exit 2; }
LAST=cuda:$((N - 1))
ALL=$(python3 -c "print(','.join(f'cuda:{i}' for i in range($N)))")
stamp() { date -u +%H:%M:%S; }
T0=$(date +%s)
once() {  # once NAME DEVICE MINUTES ARGS...: one call of one experiment, its log appended to ROOT/logs/NAME.log
  local name=$1 dev=$2 min=$3; shift 3
  echo "== $(stamp) $name --time-budget $min $*" >>"$ROOT/logs/$name.log"
  python3 "experiments/$name.py" --time-budget "$min" --no-progress --device "$dev" \
    --runs "$ROOT/$name" --out "$ROOT/figures/$name" "$@" >>"$ROOT/logs/$name.log" 2>&1
  local rc=$?
  echo "== $(stamp) $name exit $rc" >>"$ROOT/logs/$name.log"
  echo "$(stamp) $name exit $rc"
  return $rc
}
run() {   # run NAME DEVICE ARGS...: with --train-only, an experiment whose training is done evaluates in the time left
  local name=$1 dev=$2; shift 2
  once "$name" "$dev" "$MIN" "$@"
  local rc=$?
  if [ $rc = 0 ] && [[ " $* " == *" --train-only "* ]]; then
    local left
    left=$(python3 -c "import time; print(round($MIN - (time.time() - $T0) / 60 - 0.2, 2))")
    if python3 -c "import sys; sys.exit(0 if $left >= 2.5 else 1)"; then
      local rest=()
      for x in "$@"; do [ "$x" != --train-only ] && rest+=("$x"); done
      once "$name" "$dev" "$left" "${rest[@]}"
      rc=$?
    fi
  fi
  return $rc
}
echo "$(stamp) start: $N GPU(s), $MIN min, extra: $*"
SMI=
if command -v nvidia-smi >/dev/null; then   # GPU utilisation every 30 s, with timestamps, for BENCHMARKS.md
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 30 \
    >>"$ROOT/logs/smi.log" 2>&1 &
  SMI=$!
fi
PIDS=()
want() { [[ " ${ONLY:-e1_state_recall e2_recall_gap e3_token_loss e4_fusion} " == *" $1 "* ]]; }
want e1_state_recall && { run e1_state_recall cuda:0 "$@" & PIDS+=($!); }
want e4_fusion && { run e4_fusion cuda:0 "$@" & PIDS+=($!); }
want e2_recall_gap && { run e2_recall_gap "$LAST" --train-devices "$ALL" "$@" & PIDS+=($!); }
want e3_token_loss && { run e3_token_loss "$LAST" --train-devices "$ALL" "$@" & PIDS+=($!); }
fail=0
for j in "${PIDS[@]}"; do wait "$j" || fail=1; done
echo "$(stamp) all returned"
[ -n "$SMI" ] && kill "$SMI" 2>/dev/null
python3 bench/runs_status.py "$ROOT" | grep -E "runs finished"
if [ $fail = 0 ] && want e4_fusion && [[ " $* " != *" --train-only "* ]] && [ -f "$ROOT/figures/e4_fusion/report.md" ] \
   && [ ! -f "$ROOT/e4_fusion/.throughput_alone" ]; then
  echo "$(stamp) E4 throughput again, GPU to itself"
  mv "$ROOT/e4_fusion/throughput.csv" "$ROOT/e4_fusion/throughput_shared.csv" 2>/dev/null
  once e4_fusion cuda:0 0 && touch "$ROOT/e4_fusion/.throughput_alone"
fi
exit $fail
