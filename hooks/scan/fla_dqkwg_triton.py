"""fla's own Triton ``chunk_bwd_kernel_dqkwg`` launched with 32-wide blocks, checked on first use against our torch one.

Why: on Hopper with Triton in [3.4, 3.7.1) fla refuses its gated ``chunk_bwd_dqkwg`` (fla #640) and
`hooks.scan.fla_dqkwg` stands in with batched einsums, which cost about a third of a gdn75 training
step (BENCHMARKS.md section 27). fla #640's bisection (issue comments; unsloth-zoo PR 1010) pins the
miscompile to the 64-wide key block (``BK = 64``): 32 and 128 pass. fla picks ``BK = min(K, 128)``
on Hopper, i.e. 64 for K = 64; this module launches the same kernel with ``BK = BV = 32`` (fla's own
choice on small-shared-memory GPUs), the wrapper otherwise line for line as fla's
``fla/ops/common/chunk_o.py::chunk_bwd_dqkwg``.

Nothing here is trusted blindly: `usable` runs the kernel once per (device, dtype, head and width
configuration) on a small random input (two chunks) and compares every output with
`hooks.scan.fla_dqkwg`'s torch version (itself checked against autograd); a relative error above
`TOLERANCE` (the miscompile gives errors of order 1) marks that configuration unusable, warns once
and the torch version is used. ``HYBRID_INTERP_DQKWG_IMPL`` = ``auto`` (default: this kernel for 16-bit
inputs where its check passes), ``torch`` (never this kernel) or ``triton`` (this kernel for every dtype;
a failed check raises). Why not fp32 under ``auto``: the kernel's fp32 dots run in TF32, and on an H100
that put the fp32 gradients of A_log 1.3-1.9% off the reference path (max-relative, tests/gpu/
check_grad_gpu.py; BENCHMARKS.md section 29), where the torch stand-in keeps them within 1%; for bf16
training (bench/bench_train.py's) the kernel's rounding is below bf16's own.
"""
from __future__ import annotations

import os
import warnings

import torch

TOLERANCE = 0.05        # relative norm error; fp32 inputs go through TF32 dots in fla's kernel (~1e-3)
IMPLS = ("auto", "torch", "triton")
HALF = (torch.bfloat16, torch.float16)   # auto: the kernel for 16-bit inputs; fp32 ones keep the exact stand-in
_CHECKED: dict = {}


def dqkwg32(q, k, v, do, h, dh, w=None, g=None, g_gamma=None, dv=None, scale=None, state_v_first=False,
            cu_seqlens=None, chunk_size=64, chunk_indices=None, block=32):
    """fla's ``chunk_bwd_dqkwg`` (fixed length) with ``BK = BV = block`` (32; 64 is what fla picks on Hopper
    for K = 64, kept for tests/gpu/check_grad_gpu.py to show the miscompile); same arguments and outputs."""
    import triton
    from fla.ops.common.chunk_o import chunk_bwd_kernel_dqkwg
    B, T, H, K, V, HV = *k.shape, v.shape[-1], v.shape[2]
    BT = chunk_size
    NT = triton.cdiv(T, BT)
    BK = min(max(triton.next_power_of_2(K), 16), block)
    BV = min(max(triton.next_power_of_2(V), 16), block)
    NK = triton.cdiv(K, BK)
    dq = q.new_empty(B, T, HV, K)
    dk = k.new_empty(B, T, HV, K)
    dg = torch.empty(NK, *g.shape, dtype=torch.float32, device=g.device) if g is not None else None
    dw = torch.empty_like(w) if w is not None else None
    chunk_bwd_kernel_dqkwg[(NK * NT, B * HV)](
        q=q, k=k, v=v, g=g, g_gamma=g_gamma, h=h, do=do, dh=dh, dq=dq, dk=dk, dw=dw, dv=dv, dg=dg,
        cu_seqlens=None, chunk_indices=None, scale=K ** -0.5 if scale is None else scale, B=B, T=T, H=H, HV=HV,
        K=K, V=V, BT=BT, BK=BK, BV=BV, STATE_V_FIRST=state_v_first)
    if H != HV:
        dq = dq.view(B, T, H, HV // H, K).sum(3)
        dk = dk.view(B, T, H, HV // H, K).sum(3)
    return dq, dk, dw, None if dg is None else dg.sum(0)


def runs_here(device) -> bool:
    """Triton kernels run on CUDA tensors, and on CPU ones only under ``TRITON_INTERPRET=1`` (the tests)."""
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def impl() -> str:
    """``HYBRID_INTERP_DQKWG_IMPL`` (module docstring); a bad value raises naming the valid ones."""
    mode = os.environ.get("HYBRID_INTERP_DQKWG_IMPL", "auto")
    if mode not in IMPLS:
        raise ValueError(f"HYBRID_INTERP_DQKWG_IMPL={mode!r}; valid: {', '.join(IMPLS)}")
    return mode


def check_inputs(device, dtype, H, HV, K, V, with_w, state_v_first, chunk_size=64, seed=0, B=1, NT=2):
    """A random call (default B = 1, two chunks) of this configuration: keyword arguments of chunk_bwd_dqkwg."""
    gen = torch.Generator().manual_seed(seed)
    T = NT * chunk_size
    r = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    hs = (B, NT, HV, V, K) if state_v_first else (B, NT, HV, K, V)
    q, k = (torch.nn.functional.normalize(r(B, T, H, K).float(), dim=-1).to(dtype) for _ in range(2))
    g = -torch.rand(B, NT, chunk_size, HV, generator=gen).mul(0.3).cumsum(2).reshape(B, T, HV)
    return dict(q=q, k=k, v=r(B, T, HV, V), do=r(B, T, HV, V), h=r(*hs), dh=r(*hs), w=r(B, T, HV, K) if with_w else None,
                g=g.to(device), dv=r(B, T, HV, V) if with_w else None, scale=K ** -0.5, state_v_first=state_v_first,
                chunk_size=chunk_size)


def compare(kw, reference, block=32):
    """Largest relative norm error of `dqkwg32`'s outputs against ``reference(**kw)``'s (None outputs skipped)."""
    got, want = dqkwg32(**kw, block=block), reference(**kw)
    errs = [((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
            for a, b in zip(got, want) if b is not None]
    return max(errs)


def usable(q, k, v, w, state_v_first, reference) -> bool:
    """Whether `dqkwg32` may serve a call with these tensors' configuration (checked once per configuration
    against ``reference``, the torch version; module docstring)."""
    mode = impl()
    if mode == "torch" or not runs_here(q.device) or (mode == "auto" and q.dtype not in HALF):
        return False
    key = (str(q.device), q.dtype, k.shape[2], v.shape[2], k.shape[3], v.shape[3], w is not None, state_v_first)
    if key not in _CHECKED:
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            return False        # no check inside a CUDA-graph capture (host copies): the stand-in serves it
        try:
            err = compare(check_inputs(q.device, q.dtype, *key[2:]), reference)
        except Exception as e:  # noqa: BLE001  (a kernel that fails to build or launch: the torch version serves)
            err, why = float("inf"), f"{type(e).__name__}: {e}"
        else:
            why = f"relative error {err:.2e} > {TOLERANCE}"
        _CHECKED[key] = err <= TOLERANCE
        if not _CHECKED[key]:
            if mode == "triton":
                raise RuntimeError(f"fla's dqkwg kernel at 32-wide blocks failed its check for {key}: {why}")
            warnings.warn(f"hooks.scan.fla_dqkwg_triton: fla's dqkwg kernel at 32-wide blocks failed its check for "
                          f"{key} ({why}); the torch stand-in serves these calls", RuntimeWarning, stacklevel=3)
    return _CHECKED[key]


def checked() -> dict:
    """The configurations checked so far: {(device, dtype, H, HV, K, V, with w, state_v_first): passed}."""
    return dict(_CHECKED)
