"""Exact effective attention of every recurrence family, computed from its canonical view.

Every recurrence of `hooks.recurrence` is linear in its values once its gates and keys are fixed,
so its readout is exactly an attention over the values (docs/effective-attention.md derives it):

    readout_t = sum_{s<=t} A[t, s] v_s  +  init_t  +  skip_t

with ``a_t = exp(decay_t)`` and the products of transitions taken in time order (latest on the left):

    GLA     A[t, s] = scale sum_k q_tk exp(sum_{s<r<=t} g_rk) k_sk          (scalar g: one factor)
    Mamba2  A[t, s] = exp(sum_{s<r<=t} g_r) (q_t . k_s) beta_s              (q = C, k = B, v = x, beta = dt)
    Mamba1  A[d, t, s] = beta_s[d] sum_n q_t[n] exp(sum_{s<r<=t} g_r[d, n]) k_s[n]   (per channel d)
    GDN     A[t, s] = scale beta_s q_t^T M_{t,s} k_s,  M_{t,s} = prod_{r=t..s+1} a_r (I - beta_r k_r k_r^T)
    KDA     as GDN with M_{t,s} = prod_{r=t..s+1} (I - beta_r k_r k_r^T) diag(a_r)   (a_r per key dim)
    init_t  = scale q_t^T M_{t,-1} S_0   (GLA / Mamba: M diagonal, exp of the summed log decays)
    skip_t  = D v_t (Mamba2, Mamba1), 0 otherwise

Everything is computed chunkwise (chunk 64, as the scans), in pure torch on any device, in float32
(float64 inputs stay float64). Query rows t of chunk i and sources s of chunk j < i meet through a
query vector carried backwards over the chunks between them:

    A[t, s] = R_t^(j)^T U_j[:, s],   R_t^(i-1) = Q_i[t],   R_t^(j-1) = Phi_j^T R_t^(j)

* GLA / Mamba: Q_i[t] = q_t (.) exp(G_t), U_j[:, s] = beta_s k_s (.) exp(sum_{s<r<=end_j} g_r),
  Phi_j = diag(exp(sum_{r in j} g_r)); the carried factor is kept as a *sum of log decays*, so every
  exponential is of a sum of decays (never exp(G_t) exp(-G_s), which overflows under strong decay).
* GDN (fla's WY / UT form): with X = (I + L)^{-1} diag(beta), L[t, s] = beta_t exp(G_t - G_s) k_t.k_s
  (s < t), Lqk[t, s] = exp(G_t - G_s) q_t.k_s (s <= t), K~_s = exp(G_end - G_s) k_s, W = X diag(e^G) K:
  the chunk's own block is Lqk X, Q_i = diag(e^G) Q - Lqk W, U_j = K~^T X and the K x K transition
  Phi_j = exp(G_end) I - K~^T W (G: log decays summed inside the chunk, exp(G_t - G_s) by `segsum`).
  KDA: the same with exp(G) a diagonal matrix (a decay per key dim), k_t.k_s -> sum_i k_ti exp(G_ti - G_si) k_si
  (`hooks.scan.gdn.chunk_decays`).
  Cost O(T^2 K^2 / C) per head for the full pattern. beta in (0, 2) is allowed.

Shapes (`pattern`): ``[B, H, T|P, T]`` (H = the value heads; GVA q/k groups are repeated to them as
the adapters do); Mamba1: ``[B, D, T|P, T]``, one pattern per channel. Mamba1's reduced view
(`contribution_norms`) is ``[B, T|P, T]``: the L2 norm over channels of what source s adds to
readout t, which is exact as that norm (the size of the change of readout_t when x_s is zeroed,
skip term aside) but is no attention weight: every channel has its own A.

GPU: for CUDA tensors (``impl="auto"``, the default `IMPL`) the pieces of all chunks are formed at once
(`_pieces_all`, chunks folded into the head dim) and the backwards carry runs as one Triton kernel
(`hooks.effective_triton`: one program per query-row group and head, R held in registers, products in
`PRECISION`, "tf32" by default as fla's kernels, or "ieee"); ``impl="torch"`` is this pure-torch path,
the reference and the CPU default. The Triton path computes in float32 (float64 views stay on torch).

The hook point ``blocks.{i}.rec.pattern`` (`hooks.session.ScanHook`) is `hook_pattern` on the view of the
layer's scan call, at the capture's ``positions=`` rows, checked against `DEFAULT_BUDGET` first.
"""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

from hooks.names import HookError
from hooks.recurrence import FAMILIES, get_family, l2norm
from hooks.scan._common import CHUNK, norm_positions, pad_time, segsum, work
from hooks.scan.gdn import chunk_decays

DELTA = ("gdn", "kda")     # the delta-rule families (WY / UT form; KDA: GDN with a decay per key dim)
DEFAULT_BUDGET = 2 << 30   # bytes of one requested result (2 GiB); `hook_pattern` reads it at call time


class PatternMemoryError(HookError):
    """A requested effective-attention result is above the memory budget (a `hooks.names.HookError`, so
    a ValueError); the message names its shape and size and suggests ``positions=``."""


# --- the canonical view in one internal layout: [B, H, T, ...], time padded to chunks ----------

def _heads(t, H):
    """[B, T, G, N] -> [B, T, H, N] (group g serves heads g*H/G .. (g+1)*H/G - 1, as the adapters)."""
    G = t.shape[2]
    if H % G:
        raise ValueError(f"{G} q/k heads do not divide the {H} value heads")
    return t if G == H else t.repeat_interleave(H // G, dim=2)


def _pick(t, heads, dim=1):
    return t if heads is None or t is None else t.index_select(dim, heads.to(t.device))


def _check_family(family):
    if family not in FAMILIES:
        raise ValueError(f"unknown recurrence family '{family}'; valid: {', '.join(FAMILIES)}")


def _own_pattern(family):
    """The family's own ``pattern(c, rows, heads)`` where it has one (families that are no linear attention
    over their values with a diagonal or delta-rule transition: ``shortconv``), else None."""
    return getattr(get_family(family), "pattern", None)


def _prep(family, c, heads=None):
    """The view as q (scale folded in), k ``[B, H, Tp, K]``, v ``[B, H, T, V]``, write strength w
    ``[B, H, Tp]`` (Mamba) or beta (GDN), a per-chunk log decay ``g(j)`` ``[B, H, C(, K)]``, S0, D."""
    _check_family(family)
    if _own_pattern(family) is not None:
        raise NotImplementedError(f"the {family} family provides its effective attention (pattern, rec.pattern) "
                                  "only; contributions, init_term, skip_term, readout and contribution_norms "
                                  "are not implemented for it")
    if family == "mamba1":
        return _prep_mamba1(c, heads)
    q, k, v = work(c["q"]), work(c["k"]), work(c["v"])
    if c.get("qk_l2"):                         # a lazy GDN view: q, k still raw (recurrence.materialize)
        q, k = l2norm(q), l2norm(k)
    H = v.shape[2]
    heads = None if heads is None else torch.as_tensor(heads, dtype=torch.long).flatten()
    tr = lambda x: pad_time(_pick(work(x).transpose(1, 2), heads), CHUNK)  # noqa: E731
    scale = c.get("scale") or (q.shape[-1] ** -0.5 if family in DELTA + ("gla",) else 1.0)  # the kernels' default
    g = tr(c["decay"])
    beta = c.get("beta")
    delta = family in DELTA
    P = SimpleNamespace(family=family, q=tr(_heads(q, H)) * float(scale), k=tr(_heads(k, H)),
                        v=_pick(v.transpose(1, 2), heads), per_key=g.dim() == 4, gdn=delta,
                        w=tr(beta) if family == "mamba2" else None, beta=tr(beta) if delta else None,
                        S0=_pick(c.get("initial_state"), heads), D=c.get("D") if family == "mamba2" else None,
                        heads=heads)
    P.gr = lambda lo, hi: g[:, :, lo * CHUNK:hi * CHUNK]
    P.g = lambda j: P.gr(j, j + 1)
    if P.D is not None:
        P.D = _pick(work(P.D), heads, dim=0)
    return _shape(P, v.shape[1])


def _prep_mamba1(c, heads):
    """Mamba1 as GLA with one head per channel d (H = D), K = N, V = 1, q = C and k = B shared by
    all channels (grouped ``[B, T, G, N]``: each group's for its channels); its decay ``[B, T, D, N]``
    is used when the view holds it, else formed per chunk from dt (``decay_dt``) and A, as the scans do."""
    heads = None if heads is None else torch.as_tensor(heads, dtype=torch.long).flatten()
    x = _pick(work(c["v"]).transpose(1, 2), heads)                    # [B, D, T]
    B_, Dn, T = x.shape

    def shared(t):  # [B, T, N] or [B, T, G, N] -> [B, D, T', N]
        if t.dim() == 3:
            return pad_time(work(t)[:, None], CHUNK).expand(B_, Dn, -1, -1)
        t = work(t).transpose(1, 2)
        return pad_time(_pick(t.repeat_interleave(c["v"].shape[2] // t.shape[1], dim=1), heads), CHUNK)
    P = SimpleNamespace(family="mamba1", q=shared(c["q"]), k=shared(c["k"]), v=x[..., None], per_key=True,
                        gdn=False, w=pad_time(_pick(work(c["beta"]).transpose(1, 2), heads), CHUNK), beta=None,
                        heads=heads)
    S0 = c.get("initial_state")
    P.S0 = None if S0 is None else _pick(work(S0), heads)[..., None]   # [B, D, N, 1]
    P.D = None if c.get("D") is None else _pick(work(c["D"]), heads, dim=0)
    if dict.__contains__(c, "decay"):
        g = pad_time(_pick(work(dict.__getitem__(c, "decay")).transpose(1, 2), heads), CHUNK)
        P.gr = lambda lo, hi: g[:, :, lo * CHUNK:hi * CHUNK]
    else:
        dt = c.get("decay_dt")
        dt = pad_time(_pick(work(c["beta"] if dt is None else dt).transpose(1, 2), heads), CHUNK)
        A = _pick(work(c["A"]), heads, dim=0)[None, :, None, :]          # [1, D, 1, N]
        P.gr = lambda lo, hi: dt[:, :, lo * CHUNK:hi * CHUNK, None] * A
    P.g = lambda j: P.gr(j, j + 1)
    return _shape(P, T)


def _shape(P, T):
    P.B, P.H, P.K = P.q.shape[0], P.q.shape[1], P.q.shape[-1]
    P.V, P.T, P.NT = P.v.shape[-1], T, P.q.shape[2] // CHUNK
    P.dtype, P.device = P.q.dtype, P.q.device
    return P


# --- one chunk's pieces ----------------------------------------------------------------------------

def _pieces_gdn(P, j, intra):
    """GDN / KDA chunk j in the WY / UT form (module docstring): src = U^T ``[C, K]``, Phi ``[K, K]``,
    Q the query vectors ``[C, K]`` and (``intra``) the chunk's own block ``[C, C]``."""
    sl = slice(j * CHUNK, (j + 1) * CHUNK)
    return _wy(P, P.q[:, :, sl], P.k[:, :, sl], P.g(j), P.beta[:, :, sl], intra)


def _wy(P, q, k, g, beta, intra):
    """The WY / UT pieces of chunks q, k ``[B, H', C, K]``, g ``[B, H', C(, K)]``, beta ``[B, H', C]``
    (H' = heads, or heads x chunks folded together by `_pieces_all`)."""
    C = CHUNK
    strict = torch.ones(C, C, dtype=torch.bool, device=P.device).tril(-1)
    eye = torch.eye(C, dtype=P.dtype, device=P.device)
    eG, gram, tail = chunk_decays(g)                                    # exp(G_t) [B,H,C,1|K], ...
    L = gram(k, k, strict, rows=beta)
    X = torch.linalg.solve_triangular(eye + L, torch.diag_embed(beta), upper=False, unitriangular=True)
    Lqk = gram(q, k)
    W = X @ (eG * k)                                                    # [C, K]
    Kt = tail * k                                                       # exp(G_end - G_s) k_s
    Phi = eG[:, :, -1, :, None] * torch.eye(P.K, dtype=P.dtype, device=P.device) - Kt.transpose(-1, -2) @ W
    return dict(src=X.transpose(-1, -2) @ Kt, Phi=Phi, Q=eG * q - Lqk @ W, intra=Lqk @ X if intra else None)


def _suffix(g):
    """sum_{s<r<=end} g_r for every s of a chunk, summed directly (time is dim 2)."""
    incl = g.flip(2).cumsum(2).flip(2)
    return torch.cat([incl[:, :, 1:], torch.zeros_like(incl[:, :, :1])], 2)


def _pieces_diag(P, j, intra):
    """GLA / Mamba2 / Mamba1 chunk j: src ``[C, K]`` (k_s exp(suffix decay) beta_s), the chunk's total
    log decay ``tot``, the query vectors q with their in-chunk log decays ``G`` and (``intra``) the
    chunk's own block ``[C, C]``."""
    sl = slice(j * CHUNK, (j + 1) * CHUNK)
    return _diag(P, P.q[:, :, sl], P.k[:, :, sl], P.g(j), None if P.w is None else P.w[:, :, sl], intra)


def _diag(P, q, k, g, w, intra):
    """`_pieces_diag` of chunks q, k ``[B, H', C, K]``, g ``[B, H', C(, K)]``, w ``[B, H', C]`` or None."""
    ex = lambda e: e.exp() if P.per_key else e.exp()[..., None]  # noqa: E731
    src = k * ex(_suffix(g))
    if w is not None:
        src = src * w[..., None]
    out = dict(src=src, tot=g.sum(2), q=q, G=g.cumsum(2), intra=None)
    if intra:
        if P.per_key:
            dec = segsum(g.transpose(-1, -2)).exp()                      # [B,H,K,t,s]
            A = torch.einsum("bhtk,bhkts,bhsk->bhts", q, dec, k)
        else:
            A = (q @ k.transpose(-1, -2)) * segsum(g).exp()
        out["intra"] = A if w is None else A * w[:, :, None, :]
    return out


# --- the backwards carry over chunks ---------------------------------------------------------------

def _query(P, st, idx=None):
    """The carried query vectors R ``[B, H, P, K]`` of the row state (``idx``: only those rows)."""
    pick = (lambda t: t) if idx is None else (lambda t: t[:, :, idx])  # noqa: E731
    if P.gdn:
        return pick(st["R"])
    L = pick(st["L"])
    return pick(st["q"]) * (L.exp() if P.per_key else L.exp()[..., None])


def _enter(P, st, pc, here, jp):
    """Rows of this chunk start their carry from the chunk's query vectors."""
    if P.gdn:
        st["R"][:, :, here] = pc["Q"][:, :, jp]
    else:
        st["q"][:, :, here] = pc["q"][:, :, jp]
        st["L"][:, :, here] = pc["G"][:, :, jp]


def _advance(P, st, pc, later):
    """Carry the rows of later chunks back over this chunk: R <- Phi^T R (GDN), L += tot (log decays)."""
    if P.gdn:
        st["R"][:, :, later] = st["R"][:, :, later] @ pc["Phi"]
    else:
        st["L"][:, :, later] += pc["tot"][:, :, None]


def _carry(P, rows, want_A=True):
    """(A ``[B, H, P, Tp]`` or None, carried query vectors ``[B, H, P, K]`` at time -1) for query
    ``rows`` (1-D LongTensor). One pass over the chunks, latest first."""
    C = CHUNK
    rows = rows.cpu()                                  # the bookkeeping stays on the host: no device syncs
    cp, jp = rows // C, rows % C
    n = rows.numel()
    A = torch.zeros(P.B, P.H, n, P.NT * C, dtype=P.dtype, device=P.device) if want_A else None
    z = torch.zeros(P.B, P.H, n, P.K, dtype=P.dtype, device=P.device)
    st = dict(R=z) if P.gdn else dict(q=z, L=z.clone() if P.per_key else z[..., 0].clone())
    for j in reversed(range(P.NT)):
        here, later = (cp == j).nonzero().flatten(), (cp > j).nonzero().flatten()
        if not (here.numel() or later.numel()):
            continue
        pc = (_pieces_gdn if P.gdn else _pieces_diag)(P, j, want_A and here.numel() > 0)
        at = jp[here].to(P.device)
        here, later = here.to(P.device), later.to(P.device)
        if here.numel():
            _enter(P, st, pc, here, at)
            if want_A:
                A[:, :, here, j * C:(j + 1) * C] = pc["intra"][:, :, at]
        if later.numel():
            if want_A:
                A[:, :, later, j * C:(j + 1) * C] = _query(P, st, later) @ pc["src"].transpose(-1, -2)
            _advance(P, st, pc, later)
    return A, _query(P, st)


# --- the Triton path (hooks.effective_triton): all chunks' pieces at once, the carry in one kernel ----

IMPL = "auto"            # default ``impl`` of pattern & co: "auto" (Triton for CUDA tensors), "torch", "triton"
PRECISION = "tf32"       # input precision of the Triton path's products: "tf32" (as fla's kernels) or "ieee"
PIECE_BYTES = 1 << 28    # working memory of one group of chunks in `_pieces_all`


@functools.lru_cache(maxsize=None)
def _have_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _use_triton(family, P, impl):
    """Whether `_attention` takes the Triton path: ``auto`` for float32 CUDA tensors where triton imports,
    ``triton`` always (CPU tensors only under TRITON_INTERPRET=1), ``torch`` never."""
    impl = IMPL if impl is None else impl
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"unknown impl '{impl}'; valid: auto, torch, triton")
    if impl == "torch":
        return False
    if impl == "auto":
        return P.device.type == "cuda" and P.dtype != torch.float64 and _have_triton()
    if P.dtype == torch.float64:
        raise ValueError("impl='triton' computes in float32; use impl='torch' for float64 views")
    if P.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1); use impl='torch' or 'auto'")
    return True


def _pieces_all(P, n):
    """The kernel's inputs for chunks 0 .. n-1, chunks folded into the head dim (`PIECE_BYTES` of working
    memory a group): Q, src ``[B, H, n, C, K]``, Phi ``[B, H, n, K, K]`` (GLA / Mamba: ``[B, H, n, K]``,
    exp of the chunk's total log decay), the chunks' own blocks ``[B, H, n, C, C]``."""
    C, K = CHUNK, P.K
    per = P.B * P.H * C * (C * (K if P.per_key else 1) + 4 * K) * 8 * P.q.element_size()
    step = max(1, min(n, PIECE_BYTES // per))
    ex = lambda e: e.exp() if P.per_key else e.exp()[..., None]  # noqa: E731
    parts = []
    for lo in range(0, n, step):
        m = min(n, lo + step) - lo
        fold = lambda x: None if x is None else x[:, :, lo * C:(lo + m) * C].reshape(P.B, P.H * m, C, *x.shape[3:])  # noqa: E731
        g = P.gr(lo, lo + m)
        g = g.reshape(P.B, P.H * m, C, *g.shape[3:])
        if P.gdn:
            pc = _wy(P, fold(P.q), fold(P.k), g, fold(P.beta), True)
            Q, Phi = pc["Q"], pc["Phi"]
        else:
            pc = _diag(P, fold(P.q), fold(P.k), g, fold(P.w), True)
            Q, Phi = pc["q"] * ex(pc["G"]), ex(pc["tot"]).expand(P.B, P.H * m, K)
        parts.append([x.reshape(P.B, P.H, m, *x.shape[2:]) for x in (Q, pc["src"], Phi, pc["intra"])])
    return [torch.cat(xs, 2) for xs in zip(*parts)] if len(parts) > 1 else parts[0]


def _attention(family, P, rows, impl=None):
    """A ``[B, H, P, T]`` at query ``rows`` (`_rows`) by the torch carry or the Triton kernel (`_use_triton`)."""
    r = _rows(P, rows)
    if not _use_triton(family, P, impl):
        return _carry(P, r)[0][..., :P.T]
    from hooks.effective_triton import carry_triton, gdn_pieces
    n = int(r.max()) // CHUNK + 1 if r.numel() else 1
    if P.gdn and not P.per_key:                  # GDN: its pieces by Triton kernels too
        Q, src, Phi, own = gdn_pieces(P.q, P.k, P.gr(0, P.NT), P.beta, n, PRECISION)
    else:
        Q, src, Phi, own = _pieces_all(P, n)
    return carry_triton(Q, src, Phi, own, r, P.T, precision=PRECISION).to(P.dtype)


# --- public API ------------------------------------------------------------------------------------

def _rows(P, rows):
    """The query rows as a 1-D LongTensor on the host (all rows for None)."""
    r = norm_positions(rows.cpu() if torch.is_tensor(rows) else rows, P.T)
    return torch.arange(P.T) if r is None else r


def _sizes(family, c, rows, heads):
    """(B, H, P, T, V) of a view without preparing it (Mamba1: H = channels, V = 1)."""
    v = c["v"]
    B, T = v.shape[0], v.shape[1]
    H = v.shape[2] if heads is None else torch.as_tensor(heads).numel()
    V = 1 if family == "mamba1" else v.shape[-1]
    P = T if rows is None else torch.as_tensor(rows).numel()
    return B, H, P, T, V


def pattern_bytes(family, c, rows=None, heads=None, what="pattern") -> int:
    """Bytes of `pattern` (``[B, H, T|P, T]``) or, with ``what="contributions"``, of `contributions`
    (``[B, T|P, T, H, V]``) for this view, in its working dtype (float32, float64 for float64 inputs)."""
    _check_family(family)
    B, H, P, T, V = _sizes(family, c, rows, heads)
    item = 8 if c["v"].dtype == torch.float64 else 4
    return B * H * P * T * (V if what == "contributions" else 1) * item


def check_memory(family, c, rows=None, budget=DEFAULT_BUDGET, heads=None, what="pattern", hook=None) -> int:
    """The bytes of the requested result (`pattern_bytes`); raises PatternMemoryError (a HookError)
    naming its shape and size when that is above ``budget`` (None: no limit), suggesting ``positions=``
    (``rows=`` here). ``hook``: the hook name the result is for (the message then speaks of
    ``run_with_cache``)."""
    n = pattern_bytes(family, c, rows, heads, what)
    if budget is not None and n > budget:
        B, H, P, T, V = _sizes(family, c, rows, heads)
        shape = [B, H, P, T] if what == "pattern" else [B, P, T, H, V]
        msg = (f"the effective attention {what} of this {family} layer, {shape}, takes {n / 2**30:.2f} GiB, "
               f"above the budget of {budget / 2**30:.2f} GiB: ")
        if hook is not None:
            msg = (f"'{hook}': {msg}pass positions= to run_with_cache (e.g. positions=[{T - 1}]) to form only "
                   f"those query rows, or raise hooks.effective.DEFAULT_BUDGET")
        else:
            msg += "pass positions= (rows= here) to form only some query rows, heads= for some heads, or a larger budget"
        raise PatternMemoryError(msg)
    return n


def pattern(family, c, rows=None, heads=None, budget=DEFAULT_BUDGET, impl=None):
    """Exact effective attention ``A`` ``[B, H, T|P, T]`` (Mamba1: ``[B, D, T|P, T]``) of a canonical
    view (`hooks.recurrence.canonical`): readout_t = sum_s A[t, s] v_s + `init_term` + `skip_term`.
    ``rows``: only these query positions; ``heads``: only these (value) heads / Mamba1 channels;
    ``budget``: bytes allowed for the result (`check_memory`). float32 (float64 inputs: float64).
    ``impl``: "auto" (the Triton kernel of `hooks.effective_triton` for float32 CUDA tensors, torch
    otherwise), "torch" or "triton"; None: the module's `IMPL`."""
    check_memory(family, c, rows, budget, heads)
    own = _own_pattern(family)
    if own is not None:
        return own(c, rows=rows, heads=heads)
    P = _prep(family, c, heads)
    return _attention(family, P, rows, impl)


def hook_pattern(name, family, c, positions=None):
    """What the ``rec.pattern`` hook point holds: `pattern` of view ``c`` at the query rows ``positions``
    (the capture's ``positions=``; None: all), checked against `DEFAULT_BUDGET` as it is when called
    (set ``hooks.effective.DEFAULT_BUDGET`` to change it); above it a PatternMemoryError names ``name``,
    the shape, the size and ``positions=``."""
    check_memory(family, c, positions, DEFAULT_BUDGET, hook=name)
    return pattern(family, c, rows=positions, budget=None)


def contributions(family, c, rows, heads=None, budget=DEFAULT_BUDGET, impl=None):
    """A[t, s] v_s for every source s of the chosen query ``rows``: ``[B, P, T, H, V]``; summed over
    s it is the readout less `init_term` and `skip_term`. Mamba1: ``[B, P, T, D]`` (A[d, t, s] x_s[d])."""
    check_memory(family, c, rows, budget, heads, what="contributions")
    P = _prep(family, c, heads)
    out = torch.einsum("bhps,bhsv->bpshv", _attention(family, P, rows, impl), P.v)
    return out[..., 0] if family == "mamba1" else out


def init_term(family, c, rows=None, heads=None):
    """The initial state's part of the readout, scale q_t^T M_{t,-1} S_0: ``[B, T|P, H, V]``
    (Mamba1: ``[B, T|P, D]``); zeros when the view has no initial state."""
    P = _prep(family, c, heads)
    r = _rows(P, rows)
    if P.S0 is None:
        out = torch.zeros(P.B, r.numel(), P.H, P.V, dtype=P.dtype, device=P.device)
    else:
        _, R = _carry(P, r, want_A=False)
        out = (R @ work(P.S0)).transpose(1, 2)
    return out[..., 0] if family == "mamba1" else out


def skip_term(family, c, rows=None, heads=None):
    """The layer's skip D v_t (Mamba2: ``[B, T|P, H, V]``; Mamba1: ``[B, T|P, D]``); zeros where the
    family or view has none."""
    P = _prep(family, c, heads)
    r = _rows(P, rows)
    v = P.v[:, :, r.to(P.device)].transpose(1, 2)                       # [B, P, H, V]
    out = v * P.D.view(1, 1, -1, 1) if P.D is not None else torch.zeros_like(v)
    return out[..., 0] if family == "mamba1" else out


def readout(family, c, rows=None, heads=None, budget=DEFAULT_BUDGET, impl=None):
    """The readout rebuilt from the effective attention: sum_s A[t, s] v_s + init + skip,
    ``[B, T|P, H, V]`` (Mamba1: ``[B, T|P, D]``); equals `hooks.recurrence.scan`'s readout."""
    A = pattern(family, c, rows, heads, budget, impl)
    P = _prep(family, c, heads)
    o = torch.einsum("bhps,bhsv->bphv", A, P.v)
    o = o[..., 0] if family == "mamba1" else o
    return o + init_term(family, c, rows, heads) + skip_term(family, c, rows, heads)


def contribution_norms(family, c, rows=None, heads=None, budget=DEFAULT_BUDGET, block=None, impl=None):
    """||A[t, s] v_s|| (L2 over V): ``[B, H, T|P, T]``. Mamba1's reduced view: the norm over its
    channels (``heads``: only those), ``[B, T|P, T]``, computed ``block`` channels at a time without
    forming ``[B, D, P, T]``. Exact as a norm: the size of the change of readout_t when v_s is zeroed
    (at t = s the Mamba skip D v_s changes too); not an attention weight."""
    if family != "mamba1":
        P = _prep(family, c, heads)
        check_memory(family, c, rows, budget, heads)
        return _attention(family, P, rows, impl).abs() * P.v.norm(dim=-1)[:, :, None, :]
    Dn = c["v"].shape[2]
    chans = torch.arange(Dn) if heads is None else torch.as_tensor(heads, dtype=torch.long).flatten()
    B_, T = c["v"].shape[:2]
    n = T if rows is None else torch.as_tensor(rows).numel()
    item = 8 if c["v"].dtype == torch.float64 else 4
    if block is None:
        block = max(1, min(chans.numel(), (budget or DEFAULT_BUDGET) // max(1, 2 * B_ * n * T * item)))
    check_memory(family, c, rows, budget, chans[:block])
    out = None
    for i in range(0, chans.numel(), block):
        P = _prep(family, c, chans[i:i + block])
        sq = (_attention(family, P, rows, impl) * P.v[..., 0][:, :, None, :]).square().sum(1)
        out = sq if out is None else out + sq
    return out.sqrt()
