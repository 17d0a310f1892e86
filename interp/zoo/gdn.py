"""Gated DeltaNet mixer (fla's `GatedDeltaNet` layer, reduced to what the zoo needs).

    q, k, v = silu(conv(W x))                 q, k: [B, T, H, K]   v: [B, T, H, V]
    beta    = sigmoid(W_b x)  (x2 with negative eigenvalues)          [B, T, H]
    g       = -exp(A_log) * softplus(W_a x + dt_bias)   (log decay)   [B, T, H]
    o, S_T  = scan_fn(q, k, v, g, beta, scale=K**-0.5, use_qk_l2norm_in_kernel=True)
    out     = W_o (rmsnorm(o) * silu(W_g x))

``scan_fn`` is `hooks.scan.gdn.scan`: fla's chunk kernel for CUDA tensors, the pure-torch chunked
reference otherwise. It is a module attribute so `hooks` can capture the scan inputs and states.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from hooks.scan import gdn as gdn_scan
from hooks.scan._common import l2norm
from hooks.scan.kernels import use_kernels
from interp.zoo.common import GatedRMSNorm, ShortConv, proj_conv

# Whether the window path's scans take few shapes (`scan_rows`): None = on fla's kernel path only (CUDA), True /
# False = always / never (tests run the kernel path's inputs through the pure-torch scan on CPU).
FEW_SHAPES = None


def _dt_bias(n: int) -> torch.Tensor:
    dt = torch.exp(torch.rand(n) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def row_bucket(n: int) -> int:
    """The batch size a window scan of ``n`` rows runs at: the least of 1, 2, 3, 4, 6, 8, 12, 16, 24, ..., 128, 192,
    256, 384, ... (2^k and 3 * 2^(k-1)) that is >= n: at most two sizes an octave, at most 1.5x the rows."""
    p = 1 << max(0, n - 1).bit_length()
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p


def _few_shapes(t) -> bool:
    return use_kernels(t) if FEW_SHAPES is None else bool(FEW_SHAPES)


def kernel_inputs(kw: dict) -> dict:
    """Scan inputs ``kw`` (`GatedDeltaNet.scan_inputs`) as the window path gives them to fla's kernels: q and k
    l2-normalised here (`hooks.scan._common.l2norm`, the kernels' formula, in their dtype, as fla's own l2norm
    returns them) rather than in the kernel, whose l2norm is compiled and autotuned anew for each bucket of
    rows x positions x heads it meets (``NB``). Unchanged off the kernel path (`FEW_SHAPES`)."""
    if not (kw.get("use_qk_l2norm_in_kernel") and _few_shapes(kw["q"])):
        return kw
    return {**kw, "q": l2norm(kw["q"]).to(kw["q"].dtype), "k": l2norm(kw["k"]).to(kw["k"].dtype),
            "use_qk_l2norm_in_kernel": False}


def scan_rows(fn, kw: dict, initial_state=None, output_final_state=False):
    """``fn(**kw, initial_state=..., output_final_state=...)``, a GDN scan of the window path, whose number of rows
    changes from window to window. On fla's kernel path (`FEW_SHAPES`) its inputs are `kernel_inputs`, and since
    fla's chunk_local_cumsum is compiled and autotuned anew for each batch size (``B`` is a constexpr and autotune
    key), the rows go in at few batch sizes: a scan that takes fla's variable-length form (``fn.takes_cu_seqlens``,
    `hooks.scan.gdn.scan`) gets them back to back in one row (B = 1, ``cu_seqlens``: no padding), once its first
    use in a configuration matched the batched call (`back_to_back_ok`); otherwise they are padded with zero rows
    (zero state) to `row_bucket` rows, cut back after. Each row is scanned alone, so the rows' results are fn's."""
    kw = kernel_inputs(kw)
    if not _few_shapes(kw["q"]):
        return fn(**kw, initial_state=initial_state, output_final_state=output_final_state)
    if getattr(fn, "takes_cu_seqlens", False) and back_to_back_ok(fn, kw, initial_state):
        return _back_to_back(fn, kw, initial_state, output_final_state)
    B = kw["q"].shape[0]
    n = row_bucket(B)
    if n > B:
        pad = lambda t: torch.cat([t, t.new_zeros((n - B,) + t.shape[1:])])  # noqa: E731
        kw = {k: pad(v) if torch.is_tensor(v) else v for k, v in kw.items()}
        initial_state = None if initial_state is None else pad(initial_state)
    o, S = fn(**kw, initial_state=initial_state, output_final_state=output_final_state)
    return o[:B], None if S is None else S[:B]


def _back_to_back(fn, kw, initial_state, output_final_state):
    """``fn`` on the rows of ``kw`` back to back in one row (fla's variable-length form), results per row."""
    B, W = kw["q"].shape[:2]
    flat = {k: v.reshape(1, B * W, *v.shape[2:]) if torch.is_tensor(v) else v for k, v in kw.items()}
    o, S = fn(**flat, initial_state=initial_state, output_final_state=output_final_state,
              cu_seqlens=torch.arange(0, (B + 1) * W, W))
    return o.view(B, W, *o.shape[2:]), S


CHECKED: dict = {}   # (device, dtype, H, K, V, with a state) -> whether the variable-length form matched
TOLERANCE = {4: 1e-4, 2: 2e-2}   # of the batched call's largest magnitude, by bytes per element of the inputs (a
#                                 wrong form errs by order 1; 16-bit outputs may round either way at one ulp, 8e-3)


def back_to_back_error(fn, kw, initial_state) -> float:
    """max |``fn`` on the rows back to back - ``fn`` batched| over the batched call's largest magnitude, the worse of
    the outputs and the final states."""
    o, S = fn(**kw, initial_state=initial_state, output_final_state=True)
    ov, Sv = _back_to_back(fn, kw, initial_state, True)
    def rel(a, b):
        return float((a.float() - b.float()).abs().max()) / max(float(b.float().abs().max()), 1e-30)
    return max(rel(ov, o), rel(Sv, S))


def back_to_back_ok(fn, kw, initial_state) -> bool:
    """Whether ``fn``'s variable-length form may serve this configuration: on its first use the rows are scanned
    both ways and compared (outputs and final states, `TOLERANCE` for the inputs' dtype); a mismatch warns once
    and leaves the configuration to the padded batched call."""
    q, v = kw["q"], kw["v"]
    key = (str(q.device), q.dtype, q.shape[2], q.shape[3], v.shape[-1], initial_state is not None)
    if key not in CHECKED:
        err = back_to_back_error(fn, kw, initial_state)
        tol = TOLERANCE[min(4, max(2, q.element_size()))]
        CHECKED[key] = err <= tol
        if not CHECKED[key]:
            warnings.warn(f"interp.zoo.gdn.scan_rows: the GDN scan's variable-length form differs from the batched "
                          f"call by {err:.1e} (> {tol:g}) for {key}; its windows run batched (padded) instead")
    return CHECKED[key]


class GatedDeltaNet(nn.Module):
    family = "gdn"

    def __init__(self, d_model: int, n_heads: int, head_dim: int, conv_size: int = 4,
                 neg_eig: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim, self.neg_eig = n_heads, head_dim, neg_eig
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.g_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(inner, conv_size) for _ in range(3))
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(_dt_bias(n_heads))
        self.o_norm = GatedRMSNorm(head_dim, norm_eps)
        self.scan_fn = gdn_scan.scan

    def scan_inputs(self, x):
        B, T, _ = x.shape
        H, K = self.n_heads, self.head_dim
        q, k, v, a, b = proj_conv(x, [(self.q_proj, self.q_conv), (self.k_proj, self.k_conv),
                                      (self.v_proj, self.v_conv)], [self.a_proj, self.b_proj])
        q, k, v = (t.reshape(B, T, H, K) for t in (q, k, v))
        beta = b.float().sigmoid()
        if self.neg_eig:
            beta = beta * 2.0
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        return dict(q=q, k=k, v=v, g=g, beta=beta, scale=K ** -0.5, use_qk_l2norm_in_kernel=True)

    def forward_window(self, x, prev, initial_state=None, tail_only=False):
        """The outputs at positions P.. given their inputs x [B, W, D] and the inputs of positions 0..P-1,
        ``prev`` [B, P, D], as `forward` on the whole sequence computes them: the state enters from the
        prefix (a scan over ``prev`` keeping only its final state); the scan inputs of both parts come from
        one pass over ``prev`` then ``x`` (the causal short convolutions see ``prev``). ``tail_only``: the
        state the prefix leaves is given (``initial_state`` [B, H, K, V], None when P = 0) and ``prev``
        need only hold the prefix's last ``conv_size - 1`` inputs. Used by activation patching to recompute
        only what a patch at a position >= P can change; its scans take few shapes (`scan_rows`)."""
        P = prev.shape[1]
        inp = self.scan_inputs(torch.cat([prev, x], 1))
        part = [{k: v[:, sl] if torch.is_tensor(v) else v for k, v in inp.items()}
                for sl in (slice(0, P), slice(P, None))]
        S0 = initial_state if tail_only else scan_rows(self.scan_fn, part[0], output_final_state=True)[1] if P else None
        o, _ = scan_rows(self.scan_fn, part[1], initial_state=S0)
        return self.output(o, x)

    def output(self, o, x):
        """The layer's output from the scan's readout o [B, T, H, V] and the layer's inputs x [B, T, D] (the
        output gate): W_o (rmsnorm(o) * silu(W_g x))."""
        B, T, _ = x.shape
        gate = self.g_proj(x).view(B, T, self.n_heads, self.head_dim)
        return self.o_proj(self.o_norm(o.to(x.dtype), gate).reshape(B, T, -1))

    def forward(self, x):
        o, _ = self.scan_fn(**self.scan_inputs(x))
        return self.output(o, x)
