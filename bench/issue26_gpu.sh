#!/usr/bin/env bash
# The GPU measurements issue #26 still needs (BENCHMARKS.md sections 32-35), in priority order,
# each under its own timeout so that one slow step leaves the others' logs; one 10-minute device call each:
#   bash bench/issue26_gpu.sh OUTDIR 1    # window check (sweep path vs plain scans and the general path) alone
#   bash bench/issue26_gpu.sh OUTDIR 2    # stacked training: 600-step runs (6x1, 2x8g, with length groups)
#   bash bench/issue26_gpu.sh OUTDIR 3    # where a stacked step's time goes (8, 16, 32 runs; graphs, length groups, scans)
#   bash bench/issue26_gpu.sh OUTDIR 4    # gdn75 sweeps again (section 33's, with the warm resid_pre rerun)
#   bash bench/issue26_gpu.sh OUTDIR 5    # the CUDA-graph check on the experiments' other layouts (on by default)
#   bash bench/issue26_gpu.sh OUTDIR 6    # gdn75 training profiled: GPU time vs the step's wall time (0.42x on a fast H100)
#   bash bench/issue26_gpu.sh OUTDIR 7    # window profile (where a gdn75 sweep's time goes)
#   bash bench/issue26_gpu.sh OUTDIR 8    # capture overhead of residuals + all states (bench_capture, zoo part)
#   bash bench/issue26_gpu.sh OUTDIR 9    # stacked training on fla's scans: the graph check, then 6x1 vs 2x8g (warmed first)
#   bash bench/issue26_gpu.sh OUTDIR 10   # 6x1 on the reference scans (today's E1 setup), to set beside part 9's
#   bash bench/issue26_gpu.sh OUTDIR 11   # section 36's 4x setup: 6x1 on the reference scans, then 6x8gs on fla's
#   bash bench/issue26_gpu.sh OUTDIR 12   # E1's 4000 steps: 6x1 on the reference scans (~440 s estimated)
#   bash bench/issue26_gpu.sh OUTDIR 13   # E1's 4000 steps: 3x8gs on fla's scans (~420 s estimated; run it right
#                                         # after part 11 on the same machine, whose Triton cache has the kernels)
#   bash bench/issue26_gpu.sh OUTDIR 14   # gdn75 d=768 training with CUDA graphs (both models), then fla's kernels
#                                         # compiled for part 13's stacks (20 steps of 3x8gs; part 13 comes next)
#   bash bench/issue26_gpu.sh OUTDIR 15   # E1's 4000 steps: 6x1g, one graphed run per process, on the reference scans
#                                         # (set beside part 12's eager 6x1; ~100 s estimated)
#   bash bench/issue26_gpu.sh OUTDIR 16   # gdn75 d=768: eager, whole-step graphs, and the trainer's own step
#                                         # (interp.train_graph.GradPass) eager and graphed, twice in turn
#   bash bench/issue26_gpu.sh OUTDIR 17   # the state-expansion kernel per config vs the write floor, the scan check
#                                         # (first configs), then capture overhead (part 8's)
# Logs go to OUTDIR/<step>.txt; set INTERP_GIT_COMMIT first (a device host's .git may be stale).
# Triton's cache: a part ends by packing it into OUTDIR/triton.tgz (if it fits the 16 MiB a returned file may
# have); copy that to .tcache/triton.tgz here and carry .tcache, and the next call starts with fla's kernels
# compiled (set NO_TRITON_CACHE=1 for timings meant to include a first use's compiling, as part 4's).
set -uo pipefail
OUT=${1:?usage: bash bench/issue26_gpu.sh OUTDIR 1-17}
PART=${2:?usage: bash bench/issue26_gpu.sh OUTDIR 1-17}
mkdir -p "$OUT"
if [ -f .tcache/triton.tgz ] && [ -z "${NO_TRITON_CACHE:-}" ]; then mkdir -p ~/.triton && tar xzf .tcache/triton.tgz -C ~/.triton; fi
step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "== $name: $*"; timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$?" | tee -a "$OUT/$name.txt"
  tail -n 12 "$OUT/$name.txt"
}
case "$PART" in
  1) step check_window 420 python tests/gpu/check_window_gpu.py ;;
  2) step train_many 400 python bench/bench_train_many.py --steps 600 --layouts gdn75 --modes 6x1,2x8g,2x8gs,1x16gs \
       --out "$OUT/train_many.json" ;;
  3) step prof_stacked 340 python bench/prof_stacked.py --runs 8,32 --graphs off,on --split off,on
     step prof_stacked_fla 180 python bench/prof_stacked.py --runs 16 --graphs on --split off,on --scan-backend auto ;;
  4) step patch_gdn75 560 python bench/bench_patch.py --skip-tl --extra --skip-both --time-budget 500 \
       --gdn75-sites resid_pre,mixer_out,rec.state,resid_pre ;;
  5) for L in transformer gdn100 mamba275 gla75 gdn75-par; do
       step "check_stacked_graph_$L" 90 python tests/gpu/check_stacked_graph_gpu.py --layout "$L"
     done
     step check_stacked_graph_split 90 python tests/gpu/check_stacked_graph_gpu.py --runs 8 --split ;;
  6) step train_profile 240 python bench/bench_train.py --modes train --steps 10 --dqkwg auto --profile ;;
  7) step prof_window 100 python bench/prof_window.py --archs gdn75 --layers 0,6 ;;
  8) step capture 240 python bench/bench_capture.py --skip-hf ;;
  9) step check_stacked_graph_fla 150 python tests/gpu/check_stacked_graph_gpu.py --scan-backend auto
     step train_many_fla 400 python bench/bench_train_many.py --steps 600 --layouts gdn75 --modes 6x1,2x8g \
       --scan-backend auto --warm-steps 20 --out "$OUT/train_many_fla.json" ;;
  10) step train_many_ref6 120 python bench/bench_train_many.py --steps 600 --layouts gdn75 --modes 6x1 \
       --out "$OUT/train_many_ref6.json" ;;
  11) step train_many_ref6 110 python bench/bench_train_many.py --steps 600 --layouts gdn75 --modes 6x1 \
       --out "$OUT/train_many_ref6.json"
      # the warm-up compiles fla's kernels for the stacks' shapes: 222 s on a fresh H100 (section 36), 44 s cached
      step train_many_fla68 470 python bench/bench_train_many.py --steps 600 --layouts gdn75 --modes 6x8gs \
       --scan-backend auto --warm-steps 20 --out "$OUT/train_many_fla68.json" ;;
  12) step train_many_ref6_4000 550 python bench/bench_train_many.py --steps 4000 --layouts gdn75 --modes 6x1 \
       --out "$OUT/train_many_ref6_4000.json" ;;
  13) step train_many_fla38_4000 550 python bench/bench_train_many.py --steps 4000 --layouts gdn75 --modes 3x8gs \
       --scan-backend auto --out "$OUT/train_many_fla38_4000.json" ;;
  14) step train_graphs 280 python bench/bench_train.py --modes train,graphs --steps 20 --repeat 2
      step warm_fla38 300 python bench/bench_train_many.py --steps 20 --layouts gdn75 --modes 3x8gs \
       --scan-backend auto --out "$OUT/warm_fla38.json" ;;
  15) step train_many_ref6g_4000 550 python bench/bench_train_many.py --steps 4000 --layouts gdn75 --modes 6x1g \
       --out "$OUT/train_many_ref6g_4000.json" ;;
  16) step train_trainer 440 python bench/bench_train.py --modes train,graphs,trainer-eager,trainer --steps 20 \
       --repeat 2 ;;
  17) step prof_expand 240 python bench/prof_expand.py
      step check_scan 150 python tests/gpu/check_scan_gpu.py --first-config
      step capture 200 python bench/bench_capture.py --skip-hf ;;
  *) echo "part must be 1 to 17, got '$PART'" >&2; exit 2 ;;
esac
if [ -d ~/.triton/cache ]; then
  T=$(tar czf - -C ~/.triton cache | tee "$OUT/triton.tgz" | wc -c)
  if [ "$T" -gt 16000000 ]; then rm -f "$OUT/triton.tgz"; echo "Triton cache $T bytes: too large to bring back"; fi
fi
