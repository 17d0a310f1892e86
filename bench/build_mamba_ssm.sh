#!/usr/bin/env bash
# Build mamba-ssm 2.3.2.post1 from source, offline, for sm_90 only, into a target dir; then smoke-test it.
#   usage (repo root, GPU host):  bash bench/build_mamba_ssm.sh [TARGET=/root/mamba_site] > mamba_build.log 2>&1 &
#   use:                          PYTHONPATH=TARGET:$PYTHONPATH python ...   (import torch before selective_scan_cuda)
# Idempotent: when TARGET already imports mamba_ssm + selective_scan_cuda, the build is skipped. One build at a
# time (flock on TARGET.lock; a second run waits). No stdin, no network. Last line: "MAMBA_SSM OK" or
# "MAMBA_SSM FAILED (...)". Scratch: TARGET.build (sources + objects), TARGET.ninja (only if ninja was missing).
# MAMBA_SMOKE=0 skips the smoke test (tests/gpu/check_models_gpu.py --only mamba-ssm checks the adapter anyway).
#
# The kit lives in .mamba/ (git-ignored; made by `bash bench/make_mamba_kit.sh`; on the device runner pass carry=[".mamba"]):
#  mamba_ssm-2.3.2.post1/  the PyPI sdist, stripped and patched (every patch is marked "[kit]"):
#   - dropped: tests/, README.md, PKG-INFO, egg-info, mamba_ssm/ops/tilelang and ops/cute (Mamba-3 MIMO / CuTe
#     step kernels; their imports in modules/mamba3.py are try/except ImportError and need tilelang,
#     nvidia-cutlass-dsl, quack-kernels, none of which are on the host). No ROCm or other-arch files exist in it.
#   - setup.py: -gencode only for sm_90 (env MAMBA_CUDA_ARCHS="90"; upstream builds 9 archs on CUDA 13, ~9x the
#     time); MAMBA_FORCE_BUILD defaults to TRUE (upstream first tries to download a prebuilt wheel from GitHub);
#     bdist_wheel taken from setuptools (the `wheel` package is not needed); no README read; no
#     "--ptxas-options=-v" (6000 log lines); no license classifier (deprecated in recent setuptools).
#   - pyproject.toml: only [build-system]; upstream's [project] lists tilelang, quack-kernels, apache-tvm-ffi.
#   - mamba_ssm/modules/mamba2.py: the default fused path (mamba_split_conv1d_scan_combined) calls causal_conv1d's
#     CUDA op unconditionally (TypeError: 'NoneType' object is not callable without causal-conv1d); it now takes
#     the unfused path (nn.Conv1d + the same Triton SSD scan) when causal_conv1d is missing.
#   Only the extension selective_scan_cuda is built: selective_scan.cpp + 9 .cu (fwd fp32/fp16/bf16, bwd
#   {fp32,fp16,bf16}x{real,complex}). causal-conv1d is neither built nor needed (torch conv fallbacks).
#  wheels/einops-*.whl  hard import of mamba_ssm; installed into TARGET only if the host lacks einops.
#  wheels/ninja-*.whl   torch's BuildExtension compiles with ninja, MAX_JOBS files at a time; without ninja it
#     falls back to a serial distutils build (~8 min of nvcc). Used only if `ninja` is not on PATH.
# Compile cost (nvcc 13.0, sm_90, one core per file, measured on a CPU box): .cpp 22 s, fwd .cu ~29 s each,
# bwd real ~50 s, bwd complex ~67 s; ~460 s CPU in all, so ~1.5 min wall with 16 jobs, plus ~20 s of pip/link.
set -uo pipefail
T=${1:-/root/mamba_site}
PY=${PYTHON:-python3}
K=$PWD/.mamba
SRC=$K/mamba_ssm-2.3.2.post1
t0=$SECONDS
say() { echo "[mamba $(date +%T) +$((SECONDS - t0))s] $*"; }
fail() { say "MAMBA_SSM FAILED ($*)"; exit 1; }
[ -f "$SRC/setup.py" ] || fail "no kit at $SRC (run from the repo root; carry .mamba)"
mkdir -p "$(dirname "$T")" && [ -w "$(dirname "$T")" ] || fail "cannot write to $(dirname "$T")"
if command -v flock >/dev/null; then   # a second run waits for the first, then finds the build done
  exec 9>"$T.lock"; flock -n 9 || { say "waiting for another build ($T.lock)"; flock 9; }
fi

imports() { PYTHONPATH="$T${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
  "import torch, selective_scan_cuda, mamba_ssm; print('mamba_ssm', mamba_ssm.__version__, mamba_ssm.__file__)" \
  </dev/null 2>&1 | tail -n 3; }

if out=$(imports) && grep -q "^mamba_ssm " <<<"$out"; then
  say "already built: $out"
else
  "$PY" -c "import os, sysconfig; assert os.path.exists(sysconfig.get_paths()['include'] + '/Python.h')" \
    </dev/null 2>/dev/null || fail "no Python.h for $PY (python3-dev headers); a C++ extension cannot be built"
  # CUDA_HOME: torch guesses it from `which nvcc`, wrong for a wrapper such as /usr/local/bin/nvcc
  if [ -z "${CUDA_HOME:-}" ]; then
    for d in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda /usr/local/cuda-13*; do
      [ -x "$d/bin/nvcc" ] && [ -f "$d/include/cuda_runtime.h" ] && { export CUDA_HOME=$d; break; }
    done
  fi
  [ -n "${CUDA_HOME:-}" ] || fail "no CUDA toolkit (nvcc + include/cuda_runtime.h) found; set CUDA_HOME"
  ls "$CUDA_HOME"/lib*/libcudart.so >/dev/null 2>&1 || say "warning: no libcudart.so in $CUDA_HOME/lib64, link may fail"
  export PATH=$CUDA_HOME/bin:$PATH
  if ! ninja --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$T.ninja" --upgrade "$K"/wheels/ninja-*.whl </dev/null \
      || fail "ninja wheel install"
    export PATH=$T.ninja/bin:$PATH
  fi
  say "CUDA_HOME=$CUDA_HOME nvcc=$(nvcc --version | grep -o 'release [0-9.]*') ninja=$(ninja --version 2>&1) cores=$(nproc)"
  B=$T.build                            # build out of tree: keeps the kit clean, ninja reuses objects on a rerun
  mkdir -p "$B" && cp -rp "$SRC"/. "$B"/
  export MAMBA_FORCE_BUILD=TRUE MAMBA_CUDA_ARCHS=${MAMBA_CUDA_ARCHS:-90} TORCH_CUDA_ARCH_LIST=9.0 \
         MAX_JOBS=${MAX_JOBS:-$(nproc)}
  say "building selective_scan_cuda (MAX_JOBS=$MAX_JOBS, sm_$MAMBA_CUDA_ARCHS) ..."
  "$PY" -m pip install -v --no-build-isolation --no-deps --no-index --no-cache-dir --upgrade --target "$T" "$B" \
    </dev/null 2>&1 | grep -v "^ *copying \|^ *adding '\|^creating " || fail "pip build"
  say "built"
  if ! "$PY" -c "import einops" </dev/null 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target "$T" --upgrade "$K"/wheels/einops-*.whl </dev/null \
      || fail "einops wheel install"
    say "installed einops into $T"
  fi
  out=$(imports); grep -q "^mamba_ssm " <<<"$out" || fail "import after build: $out"
  say "$out"
fi

[ "${MAMBA_SMOKE:-1}" = 0 ] && { say "MAMBA_SSM OK, smoke test skipped (PYTHONPATH=$T)"; exit 0; }
say "smoke test"
PYTHONPATH="$T${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF' || fail "smoke test"
import time, torch
t = time.time()
import mamba_ssm, selective_scan_cuda
from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
from mamba_ssm.models.config_mamba import MambaConfig
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref
print("import", f"{time.time() - t:.1f}s", selective_scan_cuda.__file__, flush=True)
torch.manual_seed(0)
dev = "cuda"
# selective_scan_cuda itself (Mamba-1 kernel) against the pure-torch reference, fwd + bwd
b, d, n, l = 2, 64, 16, 128
u, dl = torch.randn(b, d, l, device=dev), torch.randn(b, d, l, device=dev) * 0.5
A, Bm, Cm, D = -torch.rand(d, n, device=dev), torch.randn(b, n, l, device=dev), torch.randn(b, n, l, device=dev), torch.randn(d, device=dev)
args = [x.requires_grad_() for x in (u, dl, A, Bm, Cm, D)]
y = selective_scan_fn(*args, delta_softplus=True)
y.sum().backward(); g = args[0].grad.clone(); args[0].grad = None
yr = selective_scan_ref(*args, delta_softplus=True)
yr.sum().backward()
print(f"selective_scan fwd err {(y - yr).abs().max().item():.2e}  bwd err {(g - args[0].grad).abs().max().item():.2e}")
assert (y - yr).abs().max() < 1e-3 and (g - args[0].grad).abs().max() < 1e-2
ids = torch.randint(0, 64, (2, 32), device=dev)
for name, cfg in [
    ("Mamba2+MHA", MambaConfig(d_model=64, n_layer=2, vocab_size=64, ssm_cfg={"layer": "Mamba2", "headdim": 32},
                               attn_layer_idx=[1], attn_cfg={"num_heads": 2})),
    ("Mamba1", MambaConfig(d_model=64, n_layer=2, vocab_size=64)),
]:
    t = time.time()
    m = MambaLMHeadModel(cfg, device=dev)
    logits = m(ids).logits
    logits.float().logsumexp(-1).mean().backward()
    torch.cuda.synchronize()
    assert torch.isfinite(logits).all()
    print(f"{name} LM forward+backward ok, logits {tuple(logits.shape)}, {time.time() - t:.1f}s")
print("mamba_ssm", mamba_ssm.__version__, "torch", torch.__version__, torch.cuda.get_device_name())
EOF
say "MAMBA_SSM OK (PYTHONPATH=$T)"
