"""A pure-torch ``chunk_bwd_dqkwg`` for fla's gated chunk backward, registered as an fla backend.

Why this file exists: fla 0.6.0 refuses to train any scalar-gated chunk recurrence (Gated DeltaNet,
simple GLA, so also our Mamba2 path) on Hopper GPUs with Triton in [3.4, 3.7.1): its Triton kernel
``chunk_bwd_kernel_dqkwg`` miscompiles there (fla issue #640) and fla raises instead. fla's own fix is
a TileLang kernel or a newer Triton, neither of which the lent GPU host has (and neither fits its
transfer limit). The sub-kernel is fully parallel over chunks (no scan: the chunk-start states
``h`` and their gradients ``dh`` are computed by fla's other, unaffected kernels), so a few batched
einsums per call do the same work at a small cost; everything else in the backward stays on fla's
kernels. fla has no pure-torch version of this sub-kernel to reuse (its ``naive.py`` files are
whole recurrences), hence this one.

The function mirrors the Triton kernel (``fla/ops/common/chunk_o.py``) step by step, including its
casts (``h``, ``dh``, ``dv`` and ``ds`` rounded to the input dtype before the matmuls, fp32
accumulation), with ``g`` the chunk-local cumulative log2 decay ``[B, T, HV]``:

    dq  = scale * exp2(g) * (do @ h^T) + ds @ k          ds = tril(do @ v^T * exp2(g_i - g_j)) * scale
    dk  = exp2(g_last - g) * (v @ dh^T) + ds^T @ q
    dw  = -(dv @ h^T)                                     (delta rule only)
    dg  = rowsum(dq * q) - rowsum(dk * k), plus, at each chunk's last token,
          exp2(g_last) * sum(h * dh) + sum(exp2(g_last - g) * (v @ dh^T) * k)

(before fla's reverse cumulative sum, which the caller does; dg is float32, float64 for float64 inputs).
Checked on CPU against autograd of the chunk equations (tests/test_fla_dqkwg.py) and on the GPU by ``tests/gpu/check_grad_gpu.py``
(gradients of zoo models on fla's kernels with this backend vs the pure-torch reference path).

Where fla's own kernel works at 32-wide blocks (checked on first use per configuration against this
torch version: `hooks.scan.fla_dqkwg_triton`), `chunk_bwd_dqkwg` runs that kernel instead; ``torch_dqkwg``
is the torch version. ``install()`` registers it once, only where fla itself would raise (Hopper, Triton in [3.4, 3.7.1),
no TileLang); ``HYBRID_INTERP_DQKWG=0`` turns it off, ``=1`` forces it on other GPUs (for checks).
``HYBRID_INTERP_DQKWG_COMPILE=1`` registers it through ``torch.compile`` (its elementwise steps fused;
bench/bench_train.py measures both). Each call is labelled ``hybrid_interp_dqkwg`` in the torch profiler.
"""
from __future__ import annotations

import functools
import os

import torch

from hooks.scan import fla_dqkwg_triton as FT
from hooks.scan._common import pad_time, work


def chunk_bwd_dqkwg(q, k, v, do, h, dh, w=None, g=None, g_gamma=None, dv=None, scale=None, state_v_first=False,
                    cu_seqlens=None, chunk_size=64, chunk_indices=None):
    """What fla's dispatcher calls: fla's own kernel at 32-wide blocks where its first-use check passed
    (`hooks.scan.fla_dqkwg_triton`), else `torch_dqkwg`. Same arguments and outputs as `torch_dqkwg`."""
    args = (q, k, v, do, h, dh, w, g, g_gamma, dv, scale, state_v_first, cu_seqlens, chunk_size, chunk_indices)
    if FT.usable(q, k, v, w, state_v_first, torch_dqkwg):
        with torch.profiler.record_function("hybrid_interp_dqkwg32"):
            return FT.dqkwg32(*args)
    return torch_dqkwg(*args)


def torch_dqkwg(q, k, v, do, h, dh, w=None, g=None, g_gamma=None, dv=None, scale=None, state_v_first=False,
                cu_seqlens=None, chunk_size=64, chunk_indices=None):
    """Torch version of fla's ``chunk_bwd_dqkwg`` for the gated, fixed-length case (the verifier
    below sends every other call back to fla). q, k ``[B, T, H, K]``; v, do, dv ``[B, T, HV, V]``;
    w ``[B, T, HV, K]``; h, dh ``[B, NT, HV, K, V]`` (``[..., V, K]`` if ``state_v_first``); g
    ``[B, T, HV]``. Returns (dq, dk ``[B, T, H, K]``, dw or None, dg ``[B, T, HV]`` float32)."""
    if w is None and q.dtype in (torch.bfloat16, torch.float16):
        _warn_unverified()
    with torch.profiler.record_function("hybrid_interp_dqkwg"):
        return _dqkwg(q, k, v, do, h, dh, w, g, dv, scale, state_v_first, chunk_size)


def _dqkwg(q, k, v, do, h, dh, w, g, dv, scale, state_v_first, chunk_size):
    """The body of `chunk_bwd_dqkwg` (compiled as one graph under ``HYBRID_INTERP_DQKWG_COMPILE=1``)."""
    B, T, H, K = k.shape
    HV = v.shape[2]
    BT, G = chunk_size, HV // H
    NT = -(-T // BT)
    scale = K ** -0.5 if scale is None else scale

    def chunks(x):               # [B, T, ...] -> [B, NT, BT, ...] in float32 (float64 stays: the CPU check),
        x = pad_time(work(x), BT, dim=1)   # zero-padded like the kernel's masked loads
        return x.reshape(B, NT, BT, *x.shape[2:])

    def heads(x):                # q / k heads repeated to the value heads (GVA: head i reads i // G)
        return x.repeat_interleave(G, dim=2) if G > 1 else x

    if state_v_first:
        h, dh = h.transpose(-1, -2), dh.transpose(-1, -2)
    qc, kc = chunks(heads(q)), chunks(heads(k))                            # [B, NT, BT, HV, K]
    vc, doc = chunks(v), chunks(do)                                        # [B, NT, BT, HV, V]
    hf = work(h.to(do.dtype))                                              # the kernel casts h to do's dtype
    dhf = work(dh.to(v.dtype))
    dq = torch.einsum("bntjv,bnjkv->bntjk", doc, hf)
    dk = torch.einsum("bntjv,bnjkv->bntjk", vc, dhf)
    ds = torch.einsum("bnijv,bnsjv->bnjis", doc, vc)                       # [B, NT, HV, BT(i), BT(s)]
    dw = None
    if w is not None:
        dw = -torch.einsum("bntjv,bnjkv->bntjk", chunks(dv.to(v.dtype)), work(h.to(v.dtype)))
    valid = (torch.arange(NT * BT, device=k.device) < T).view(NT, BT)
    last = (torch.arange(NT, device=k.device) * BT + BT).clamp(max=T) - 1  # each chunk's last token
    gc = chunks(g)                                                         # [B, NT, BT, HV]
    g_last = work(g)[:, last]                                              # [B, NT, HV]
    dg_last = (work(h) * work(dh)).sum((-2, -1)) * torch.exp2(g_last)      # the kernel reads h, dh unrounded here
    dq = dq * (torch.exp2(gc) * scale)[..., None]
    dk = dk * torch.where(valid[None, :, :, None], torch.exp2(g_last[:, :, None] - gc), 0)[..., None]
    dg_last = dg_last + (dk * kc).sum((2, 4))
    gi = gc.permute(0, 1, 3, 2)                                            # [B, NT, HV, BT]
    causal = torch.tril(torch.ones(BT, BT, dtype=torch.bool, device=k.device))
    mask = causal[None] & valid[:, :, None] & valid[:, None, :]            # [NT, BT, BT]
    ds = torch.where(mask[None, :, None], ds * torch.exp2(gi[..., :, None] - gi[..., None, :]), 0) * scale
    ds = work(ds.to(k.dtype))
    dq = dq + torch.einsum("bnjis,bnsjk->bnijk", ds, kc)
    dk = dk + torch.einsum("bnjis,bnijk->bnsjk", ds, qc)
    dg = (dq * qc).sum(-1) - (dk * kc).sum(-1)                             # [B, NT, BT, HV]

    def unchunk(x):
        return x.reshape(B, NT * BT, *x.shape[3:])[:, :T]
    dq, dk, dg = unchunk(dq), unchunk(dk), unchunk(dg)
    dg[:, last] += dg_last                                                 # at each chunk's last token
    if G > 1:
        dq = dq.view(B, T, H, G, K).sum(3)
        dk = dk.view(B, T, H, G, K).sum(3)
    # contiguous, as the kernel's outputs are: fla's next steps view() them (l2norm_bwd)
    return (dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(),
            None if dw is None else unchunk(dw).to(w.dtype).contiguous(), dg.contiguous())


@functools.lru_cache(maxsize=None)
def _warn_unverified():
    """Once per process: 16-bit gradients of simple-GLA (our Mamba2 path) through fla + this stand-in
    are not verified (BENCHMARKS.md section 2: a Mamba2 model's A_log gradient was 0.74 off in bf16)."""
    import warnings
    warnings.warn("hooks.scan.fla_dqkwg: 16-bit training of simple-GLA / Mamba2 layers on fla's kernels with this "
                  "stand-in is not verified (its A_log gradients differed from the reference path by 0.74 relative "
                  "in bf16 on an H200; fp32 matched to 2.5e-3; BENCHMARKS.md section 2). Train those layers in "
                  "fp32 or on the reference path (set_scan_backend('reference')) for verified gradients.",
                  RuntimeWarning, stacklevel=3)


def verify(q, k, v, do, h, dh, w=None, g=None, g_gamma=None, dv=None, scale=None, state_v_first=False,
           cu_seqlens=None, chunk_size=64, chunk_indices=None):
    """(accepted, reason) in fla's backend protocol: only the gated, fixed-length case fla refuses."""
    if g is None or g_gamma is not None:
        return False, "hybrid-interp's torch dqkwg handles the gated case only (fla's kernel is fine otherwise)"
    if cu_seqlens is not None:
        return False, "hybrid-interp's torch dqkwg does not handle variable-length batches"
    if v.shape[2] % k.shape[2]:
        return False, f"value heads {v.shape[2]} not a multiple of key heads {k.shape[2]}"
    return True, None


def needed() -> bool:
    """True where fla 0.6 would raise for the gated backward (Hopper, Triton in [3.4, 3.7.1)) and no
    TileLang is installed to take over; ``HYBRID_INTERP_DQKWG`` = 0 / 1 overrides."""
    env = os.environ.get("HYBRID_INTERP_DQKWG")
    if env is not None:
        return env != "0"
    import importlib.util
    try:
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except ImportError:     # another fla version: its own checks apply
        return False
    return bool(IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1
                and importlib.util.find_spec("tilelang") is None)


@functools.lru_cache(maxsize=None)
def install() -> bool:
    """Register `chunk_bwd_dqkwg` with fla's dispatcher for the ``common`` ops (once; only where
    `needed`). Returns whether it is registered. Call it on a CUDA host after fla is importable."""
    if not needed():
        return False
    from fla.backends import BaseBackend, register
    from fla.ops.common import chunk_o    # noqa: F401  (creates the dispatcher's registry for 'common')

    class HybridInterpTorchDqkwg(BaseBackend):
        backend_type = "hybrid_interp_torch"
        priority = 1            # before fla's TileLang backend (priority 5), which is absent here anyway

        def chunk_bwd_dqkwg(self, *args, **kwargs):
            return chunk_bwd_dqkwg(*args, **kwargs)

        def chunk_bwd_dqkwg_verifier(self, *args, **kwargs):
            return verify(*args, **kwargs)

    if os.environ.get("HYBRID_INTERP_DQKWG_COMPILE") == "1":
        global _dqkwg
        _dqkwg = torch.compile(_dqkwg, dynamic=False)
    register("common")(HybridInterpTorchDqkwg)
    return True
