"""Shared pieces of the scan modules: input checks, fla's pure-torch references, chunk padding, segment
sums of log decays, and the per-token state expansion used by every family.

Every recurrence here is a decayed cumulative sum of rank-1 writes (docs/per-token-states.md):

    S_t = diag(a_t) S_{t-1} + k_t w_t^T        a_t = exp(g_t), scalar or per key dim

(w = v for GLA / Mamba2, w = d, the effective "delta" write, for Gated DeltaNet). Inside a chunk
that starts from h_c, with seg(t, s) = sum_{s<i<=t} g_i:

    S_t = exp(seg(t, -1)) h_c + sum_{s<=t} exp(seg(t, s)) k_s w_s^T

`expand_states` evaluates this for any set of positions given the chunk-start states and writes.
"""
from __future__ import annotations

import torch

CHUNK = 64


def fla_reference(family: str):
    """fla's pure-torch reference module ``fla/ops/<family>/naive.py``, loaded by file path: the
    package ``fla.ops.<family>`` imports Triton, which CPU hosts must not. None without fla."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("fla")
    if spec is None:
        return None
    path = Path(spec.origin).parent / "ops" / family / "naive.py"
    s = importlib.util.spec_from_file_location(f"fla_naive_{family}", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def expect(t, name: str, shape: tuple):
    """Check ``t`` against a shape spec whose entries are ints or None (any)."""
    if t is None:
        return
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {want}")


def work(x):
    """The pure-torch paths compute in float32; float64 inputs stay float64 (for gradcheck)."""
    return x if x.dtype == torch.float64 else x.float()


def l2norm(x):
    """The kernels' use_qk_l2norm_in_kernel: x / sqrt(sum x^2 + 1e-6), not F.normalize's clamp."""
    xf = work(x)
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + 1e-6)


def torch_impl(impl: str):
    """states() off the kernel path: only ``auto`` and ``torch`` exist there."""
    if impl not in ("auto", "torch"):
        raise ValueError(f"impl '{impl}' needs CUDA tensors and fla's kernels; valid here: auto, torch")


def norm_positions(positions, T: int):
    """None, or a 1-D LongTensor of positions in 0..T-1 (ValueError otherwise)."""
    if positions is None:
        return None
    p = torch.as_tensor(positions, dtype=torch.long).flatten()
    if p.numel() and (p.min() < 0 or p.max() >= T):
        raise ValueError(f"positions must lie in 0..{T - 1}, got {p.tolist()}")
    return p


def pad_time(x, C: int, dim: int = 2):
    """Pad ``dim`` with zeros up to a multiple of C."""
    n = (-x.shape[dim]) % C
    if n == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, n]
    return torch.nn.functional.pad(x, pad)


def segsum(g):
    """g ``[..., C]`` log decays -> ``[..., C, C]`` with out[t, s] = sum_{s<i<=t} g_i for s <= t
    and -inf above the diagonal. Summed directly, not as a difference of cumulative sums, which
    loses float32 precision under strong decay."""
    C = g.shape[-1]
    strict = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)
    seg = torch.where(strict, g[..., :, None].expand(*g.shape, C), 0).cumsum(-2)   # [..., i->t, s]
    return torch.where(strict | torch.eye(C, dtype=torch.bool, device=g.device), seg, -float("inf"))


def expand_states(h, k, w, g, positions=None, out_dtype=torch.float32, chunk=CHUNK, block=None):
    """Per-token states from chunk-start states and writes (pure torch, any device).

    h ``[B, NT, H, K, V]`` chunk-start states (chunk c starts at token c*chunk),
    k ``[B, T, H, K]``, w ``[B, T, H, V]`` writes, g ``[B, T, H]`` or ``[B, T, H, K]`` per-step
    log decays (natural log, not cumulated), positions None (all) or a 1-D LongTensor.
    Returns ``[B, T|P, H, K, V]`` in ``out_dtype``: S_p = exp(seg(p, -1)) h_c + sum_s exp(seg(p, s)) k_s w_s^T.
    Positions are done in blocks (``block``, default ~256 MiB of float32 temporaries) to bound memory."""
    B, T, H, K = k.shape
    V = w.shape[-1]
    C = chunk
    pos = torch.arange(T, device=k.device) if positions is None else positions.to(k.device)
    per_key = g.dim() == 4
    kp, wp, gp = (pad_time(x, C, dim=1) for x in (k, w, g))
    if block is None:
        block = max(1, (1 << 26) // max(1, B * C * H * max(K, V)))
    ar = torch.arange(C, device=k.device)
    out = []
    for i in range(0, pos.numel(), block):
        p = pos[i:i + block]
        c, j = p // C, p % C
        idx = (c[:, None] * C + ar).flatten()                         # [P*C]
        shp = (B, p.numel(), C, H)
        kc = work(kp[:, idx]).view(*shp, K)
        wc = work(wp[:, idx]).view(*shp, V)
        gc = work(gp[:, idx]).view(*shp, *((K,) if per_key else ()))
        m = (ar[None, :] <= j[:, None]).view(1, -1, C, 1, *((1,) if per_key else ()))  # i <= p
        # suffix sums over i in [s, p] (flip-cumsum-flip), then shift to (s, p]
        incl = torch.where(m, gc, 0).flip(2).cumsum(2).flip(2)
        excl = torch.cat([incl[:, :, 1:], torch.zeros_like(incl[:, :, :1])], 2)
        W = torch.where(m, excl, -float("inf")).exp()                  # [B,P,C,H(,K)]
        X = W * kc if per_key else W[..., None] * kc                  # [B,P,C,H,K]
        S = torch.einsum("bpchk,bpchv->bphkv", X, wc)
        start = incl[:, :, 0].exp()                                    # exp(sum_{i<=p} g_i)
        S += (start[..., None] if per_key else start[..., None, None]) * work(h[:, c])
        out.append(S.to(out_dtype))
    if not out:
        return k.new_zeros(B, 0, H, K, V, dtype=out_dtype)
    return torch.cat(out, 1)
