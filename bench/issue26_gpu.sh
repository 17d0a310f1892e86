#!/usr/bin/env bash
# The GPU measurements issue #26 still needs (BENCHMARKS.md sections 32-33), in priority order,
# each under its own timeout so that one slow step leaves the others' logs; fits two 10-minute device calls:
#   bash bench/issue26_gpu.sh OUTDIR 1    # window check (fla's variable-length form), the three gdn75 sweeps
#   bash bench/issue26_gpu.sh OUTDIR 2    # stacked training with CUDA graphs (check, modes), gdn75 training, effective check
#   bash bench/issue26_gpu.sh OUTDIR 3    # window profile (where a gdn75 sweep's time goes)
#   bash bench/issue26_gpu.sh OUTDIR 4    # when one call is all there is: the graphs check, 6x1 vs 2x8g, the sweeps, window check
# Logs go to OUTDIR/<step>.txt; set INTERP_GIT_COMMIT first (a device host's .git may be stale).
set -uo pipefail
OUT=${1:?usage: bash bench/issue26_gpu.sh OUTDIR 1|2|3|4}
PART=${2:?usage: bash bench/issue26_gpu.sh OUTDIR 1|2|3|4}
mkdir -p "$OUT"
step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "== $name: $*"; timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$?" | tee -a "$OUT/$name.txt"
  tail -n 12 "$OUT/$name.txt"
}
case "$PART" in
  1) step check_window 240 python tests/gpu/check_window_gpu.py
     step patch_gdn75 420 python bench/bench_patch.py --skip-tl --extra --skip-both --time-budget 360 \
       --gdn75-sites resid_pre,mixer_out,rec.state,resid_pre ;;
  2) step check_stacked_graph 90 python tests/gpu/check_stacked_graph_gpu.py
     step train_many 230 python bench/bench_train_many.py --steps 300 --layouts gdn75 --modes 6x1,2x8,2x8g,4x8g \
       --out "$OUT/train_many.json"
     step train_b 150 python bench/bench_train.py --modes train --steps 20 --dqkwg auto --conv torch,fla
     step check_effective 90 python tests/gpu/check_effective_gpu.py ;;
  3) step prof_window 100 python bench/prof_window.py --archs gdn75 --layers 0,6 ;;
  4) step check_stacked_graph 60 python tests/gpu/check_stacked_graph_gpu.py
     step train_many 120 python bench/bench_train_many.py --steps 300 --layouts gdn75 --modes 6x1,2x8g \
       --out "$OUT/train_many.json"
     step check_window 40 python tests/gpu/check_window_gpu.py
     step patch_gdn75 110 python bench/bench_patch.py --skip-tl --extra --skip-both --time-budget 90 \
       --gdn75-sites resid_pre ;;
  *) echo "part must be 1, 2, 3 or 4, got '$PART'" >&2; exit 2 ;;
esac
