"""Kimi Delta Attention (KDA) scan: the gated delta rule with a decay per key dim (fla's
``fla/ops/kda/naive.py``, HF's ``kimi_linear``).

    a_t = exp(g_t)                                   g_t: log decay per key dim, [K] per head
    d_t = beta_t (v_t - (diag(a_t) S_{t-1})^T k_t)   effective write ("delta")
    S_t = diag(a_t) S_{t-1} + k_t d_t^T              S: [K, V] per head, float32
        = (I - beta_t k_t k_t^T) diag(a_t) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale q_t)

i.e. Gated DeltaNet (`hooks.scan.gdn`) with its scalar a_t replaced by diag(a_t): the decay acts on
the key rows of the state first, then the delta write. This is the order of fla's
``naive_recurrent_kda`` and of HF's ``recurrent_kimi_delta_attention`` / ``chunk_kimi_delta_attention``
(tests/test_scan_kda.py checks this module against fla's naive and a float64 step loop;
tests/test_adapters_kimi.py checks HF's kernel outputs and cached state against such a loop).

Shapes: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, beta ``[B, T, H]``, state ``[B, H, K, V]``.

Paths: ``naive`` (step loop) and ``chunk_torch`` (pure-torch chunked, differentiable, any device) are
`hooks.scan.gdn`'s, called with ``per_key_decay=True`` (the chunk form there, with exp(G_t) a diagonal
matrix); ``scan`` calls fla's ``fla.ops.kda.chunk_kda`` for CUDA tensors when fla's kernels are
usable (as `hooks.scan.gdn` calls ``chunk_gated_delta_rule``) and ``chunk_torch`` otherwise.
``states`` (S_t after every or selected tokens) is the pure-torch chunk form on every device, CUDA
included (chunk-start states and effective writes from `hooks.scan.gdn`'s chunk pass, expanded by
`hooks.scan._common.expand_states`): there is no Triton state path for KDA yet. ``FAMILY`` is this
family for `hooks`.
"""
from __future__ import annotations

import torch

from hooks.scan import gdn
from hooks.scan._common import expand_states, expect, l2norm, norm_positions, torch_impl
from hooks.scan.family import Family
from hooks.scan.kernels import use_kernels


def _check(k, g):
    B, T, H, K = k.shape
    expect(g, "g (KDA: a log decay per key dim)", (B, T, H, K))


def naive(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
          use_qk_l2norm_in_kernel=False, **unused):
    """Step-by-step reference in float32 (`hooks.scan.gdn.naive` with g per key dim).
    Returns (o [B,T,H,V] in v's dtype, S_T or None)."""
    _check(k, g)
    return gdn.naive(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                     per_key_decay=True)


def chunk_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False, **unused):
    """Pure-torch chunked scan (any device, differentiable). Same result as ``naive``."""
    _check(k, g)
    return gdn.chunk_torch(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                           per_key_decay=True)


def scan(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
         use_qk_l2norm_in_kernel=False, **unused):
    """fla's ``chunk_kda`` for CUDA tensors (with fla's kernels), ``chunk_torch`` otherwise."""
    _check(k, g)
    if use_kernels(q):
        from fla.ops.kda import chunk_kda
        return chunk_kda(q, k, v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    return chunk_torch(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


def states(q, k, v, g, beta, scale=None, initial_state=None, use_qk_l2norm_in_kernel=False, positions=None,
           out_dtype=torch.float32, impl="auto"):
    """S_t, the state after writing token t: ``[B, T, H, K, V]`` (float32 unless ``out_dtype``), or
    ``[B, P, H, K, V]`` for a 1-D list/LongTensor of positions. Pure torch on every device (``impl``:
    ``auto`` or ``torch``); q and scale do not enter."""
    _check(k, g)
    gdn._prep(q, k, v, g, beta, scale, initial_state, False, per_key=True)  # shape checks
    torch_impl(impl)
    pos = norm_positions(positions, k.shape[1])
    k = l2norm(k) if use_qk_l2norm_in_kernel else k
    _, _, h, d = gdn._chunks(q, k, v, g, beta, 1.0, initial_state, keep=True)
    return expand_states(h, k, d, g, pos, out_dtype)


class KDAFamily(gdn.GDNFamily):
    """KDA in the hook names: q, k (l2-normalised where the layer asks), v, decay = g ``[B, T, H, K]``
    (per key dim), beta. The canonical view and its scan / states calls are GDN's; the paths they run
    are this module's."""
    name = "kda"
    run_scan, run_states = staticmethod(scan), staticmethod(states)

    call_with_states = Family.call_with_states  # no kept fla pieces for KDA: the layer's call, then `states`


FAMILY = KDAFamily()
