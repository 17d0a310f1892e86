"""The hook-name vocabulary, one for every model family.

Shapes: B batch, T tokens (P in a cache made with ``positions=`` P of them; hook functions always see all T),
D model width, H heads, Hkv key/value heads (GQA), Dh head dim, K / V key / value dim of a recurrent state.
"float32" below: the recurrent tensors the toolkit computes (states, writes, readouts) are float64 where the
layer's scan inputs are float64 (a float64 model whose layer does not compute its scan in float32), else float32
(`hooks.state_dtypes.work_dtype`); a cache's ``state_dtype`` rounds the cached states.

=============================  ====================  ==========================================
name                           shape                 what
=============================  ====================  ==========================================
``embed``                      [B, T, D]             token embeddings (input of block 0)
``blocks.{i}.resid_pre``       [B, T, D]             residual stream entering block i
``blocks.{i}.resid_mid``       [B, T, D]             after the mixer, before the MLP
``blocks.{i}.resid_post``      [B, T, D]             residual stream leaving block i
``blocks.{i}.mixer_out``       [B, T, D]             token mixer output (attention, recurrent or
                                                     both for parallel layers), added to resid
``blocks.{i}.mlp_out``         [B, T, D]             MLP output, added to the residual stream
``blocks.{i}.attn.q``          [B, T, H, Dh]         queries after RoPE
``blocks.{i}.attn.k``          [B, T, Hkv, Dh]       keys after RoPE
``blocks.{i}.attn.v``          [B, T, Hkv, Dh]       values
``blocks.{i}.attn.pattern``    [B, H, T(P), T]       softmax attention weights (recomputed from
                                                     q, k with the layer's mask / window / GQA)
``blocks.{i}.attn.head_out``   [B, T, H, Dh]         per-head output before the out-projection
``blocks.{i}.rec.q``           [B, T, H, K]          recurrent query (GDN, KDA: after its l2-norm;
                                                     Mamba2: C)
``blocks.{i}.rec.k``           [B, T, H, K]          recurrent key (GDN, KDA: after l2-norm;
                                                     Mamba2: B)
``blocks.{i}.rec.v``           [B, T, H, V]          recurrent value (Mamba2: x)
``blocks.{i}.rec.decay``       [B, T, H] or          log decay g_t (GLA, KDA: per key dim
                               [B, T, H, K]          [B,T,H,K]; Mamba2: dt*A)
``blocks.{i}.rec.beta``        [B, T, H]             write strength (GDN, KDA: beta; Mamba2: dt);
                                                     absent for GLA
``blocks.{i}.rec.state``       [B, T(P), H, K, V]    state S_t after token t, float32
                                                     (Mamba2: h_t as [N, P])
``blocks.{i}.rec.readout``     [B, T, H, V]          scan output, as the layer consumes it
                                                     (S_t^T (scale q_t); Mamba2 adds D x_t)
``blocks.{i}.rec.pattern``     [B, H, T(P), T]       exact effective attention A[t, s] of the
                                                     recurrence: readout_t = sum_s A[t, s] v_s
                                                     (+ D v_t); cache only (hooks.effective)
``blocks.{i}.rec.write_k``     [B, T(P), H, K]       token t's write to the state, factored:
``blocks.{i}.rec.write_v``     [B, T(P), H, V]       S_t = a_t S_{t-1} + write_k_t write_v_t^T;
                                                     GDN / KDA (k_t, d_t) with the delta-rule
                                                     write d_t = beta_t (v_t - a_t S_{t-1}^T k_t),
                                                     GLA (k_t, v_t), Mamba2 (k_t, beta_t v_t),
                                                     Mamba1 (k_t [B,T,N], beta_t v_t [B,T,D]);
                                                     float32. A hook that changes a write makes
                                                     the recurrence continue from it; later
                                                     tokens' writes follow the edited past (GDN's
                                                     d_t is recomputed from it)
``blocks.{i}.attn.out``        [B, T, D]             parallel layers only (zoo ``-par``,
``blocks.{i}.rec.out``                               falcon_h1): one branch's term of mixer_out,
                                                     after its out-projection and multiplier;
                                                     attn.out + rec.out = mixer_out (the model's
                                                     own sum). A hook's replacement is what the
                                                     layer sums
=============================  ====================  ==========================================

Recurrences, in these names (``a_t = exp(decay_t)``)::

    GDN     S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T
    KDA     S_t = diag(a_t) S_{t-1} + beta_t k_t (v_t - (diag(a_t) S_{t-1})^T k_t)^T   (a_t per key dim)
    GLA     S_t = diag(a_t) S_{t-1} + k_t v_t^T
    Mamba2  S_t = a_t S_{t-1} + beta_t k_t v_t^T
    readout_t = S_t^T (scale q_t)
    mLSTM   S_t = f'_t S_{t-1} + i'_t k_t v_t^T,   n_t = f'_t n_{t-1} + i'_t k_t   (stabilised; see below)
    readout_t = S_t^T (scale q_t) / (max(|n_t . scale q_t|, exp(-m_t)) + eps)
    Mamba1  S_t[d, n] = a_t[d, n] S_{t-1}[d, n] + beta_t[d] v_t[d] k_t[n]
    readout_t[d] = sum_n S_t[d, n] q_t[n] + D[d] v_t[d]

Mamba1 (selective scan; jamba, mamba, falcon_mamba, zamba, mamba-ssm's Mamba layers) has its own
shapes. Its state is one scalar recurrence per channel d (D = d_inner) and state dim n, i.e. GLA
with one head per channel, K = N and V = 1; the state is kept as ``[D, N]`` (HF's and
mamba-ssm's ``ssm_state`` layout, ``[B, D, N]``) rather than ``[H=D, K=N, V=1]``:

=============================  ====================  ==========================================
``blocks.{i}.rec.q``           [B, T, N]             C_t (shared by all channels; zamba: [B, T,
                                                     H, N], one per mamba head, channel d in head
                                                     d // (D / H))
``blocks.{i}.rec.k``           [B, T, N]             B_t (zamba: [B, T, H, N], as q)
``blocks.{i}.rec.v``           [B, T, D]             x_t (after the conv)
``blocks.{i}.rec.beta``        [B, T, D]             dt_t (after bias and softplus)
``blocks.{i}.rec.decay``       [B, T, D, N]          dt_t[d] A[d, n] (formed only when hooked:
                                                     it is as large as all the states)
``blocks.{i}.rec.state``       [B, T(P), D, N]       h_t, float32
``blocks.{i}.rec.readout``     [B, T, D]             sum_n h_t C_t + D x_t, before the z gate
``blocks.{i}.rec.pattern``     [B, D, T(P), T]       one exact pattern per channel d: readout_t[d]
                                                     = sum_s A[d, t, s] x_s[d] + D[d] x_t[d]
=============================  ====================  ==========================================

The gated short convolution (``shortconv``: LFM2's ``conv`` layers, lfm2 / lfm2_moe / lfm3;
hooks.scan.shortconv) is ``y_t = C_t (.) conv(B (.) x)_t`` per channel d (D = hidden size) with a
depthwise kernel w ``[D, L]`` (L = ``conv_L_cache``). Its state is the window of the last L writes
B (.) x, i.e. the conv cache HF keeps: ``S_t[d, j] = B_{t-L+1+j}[d] x_{t-L+1+j}[d]``, oldest first,
zeros before the sequence; ``y_t[d] = C_t[d] (sum_j w[d, j] S_t[d, j] + bias[d])``. It has no decay or
beta; a changed S_t changes this layer's readouts at t .. t+L-1 only (the window then slides past it):

=============================  ====================  ==========================================
``blocks.{i}.rec.q``           [B, T, D]             C_t, the output gate
``blocks.{i}.rec.k``           [B, T, D]             B_t, the input gate
``blocks.{i}.rec.v``           [B, T, D]             x_t
``blocks.{i}.rec.state``       [B, T(P), D, L]       the window S_t after token t (HF's conv
                                                     cache layout [B, D, L], newest last), float32
``blocks.{i}.rec.readout``     [B, T, D]             C_t (.) (conv + bias), before out_proj
``blocks.{i}.rec.pattern``     [B, D, T(P), T]       per channel: A[d, t, s] = C_t[d] w[d, L-1-(t-s)]
                                                     B_s[d] for 0 <= t-s < L (banded), so readout_t
                                                     = sum_s A[d, t, s] x_s[d] + C_t[d] bias[d]
=============================  ====================  ==========================================

RG-LRU (recurrent_gemma's recurrent blocks) is this recurrence with N = 1 (one scalar state per channel
d of ``lru_width``), so it is the ``mamba1`` family in the same layout:
h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t), with x_t the conv output, i_t its input gate and
log a_t = -8 r_t softplus(Lambda); a_t = 0 at a reset (position 0):

=============================  ====================  ==========================================
``blocks.{i}.rec.q``           [B, T, 1]             ones (C: the whole state is read out)
``blocks.{i}.rec.k``           [B, T, 1]             ones (B: the whole input is written)
``blocks.{i}.rec.v``           [B, T, D]             i_t x_t, the gated input
``blocks.{i}.rec.beta``        [B, T, D]             sqrt(1 - a_t^2) (1 at a reset)
``blocks.{i}.rec.decay``       [B, T, D, 1]          log a_t (-inf at a reset)
``blocks.{i}.rec.state``       [B, T(P), D, 1]       h_t, float32
``blocks.{i}.rec.readout``     [B, T, D]             h_t, before the GeLU branch's gate
``blocks.{i}.rec.pattern``     [B, D, T(P), T]       readout_t[d] = sum_s A[d, t, s] v_s[d]
=============================  ====================  ==========================================

MiniMax's lightning attention is GLA with one scalar decay per head, constant in time and scale 1:
S_t = exp(-s_h) S_{t-1} + k_t v_t^T, readout_t = S_t^T q_t, so it has the GLA shapes above with
``rec.decay`` = -s_h ``[B, T, H]`` (the layer's ``slope_rate``) and no ``rec.beta``; ``rec.state``
``[B, T(P), H, K, V]`` is the layout of the model's linear cache (K^T V per head).

RWKV-4's WKV (``wkv``: HF ``rwkv``'s time mix; hooks.scan.wkv) is one recurrence per channel d (D =
``attention_hidden_size``) with a constant log decay w = -exp(time_decay) and a bonus u = time_first for the
current token: num_t = e^w num_{t-1} + e^{k_t} v_t, den_t = e^w den_{t-1} + e^{k_t},
wkv_t = (num_{t-1} + e^{u+k_t} v_t) / (den_{t-1} + e^{u+k_t}), readout_t = q_t (.) wkv_t. It has no beta;
a changed S_t changes the readouts from t + 1 on (wkv_t reads S_{t-1}):

=============================  ====================  ==========================================
``blocks.{i}.rec.q``           [B, T, D]             sigmoid(receptance), the output gate
``blocks.{i}.rec.k``           [B, T, D]             key (after the token-shift mix)
``blocks.{i}.rec.v``           [B, T, D]             value (after the token-shift mix)
``blocks.{i}.rec.decay``       [B, T, D]             w = -exp(time_decay), the same at every token
``blocks.{i}.rec.state``       [B, T(P), D, 2]       (num_t, den_t) in their real scale, float32
                                                     (HF's cache keeps (num', den', max) with
                                                     num = num' e^max: not mixable across runs)
``blocks.{i}.rec.readout``     [B, T, D]             q_t (.) wkv_t, the input of attention.output
``blocks.{i}.rec.pattern``     [B, D, T(P), T]       per channel, a normalised attention gated by
                                                     q: A[d, t, s] = q_t e^{L[t, s]} / sum_s' e^{L[t, s']},
                                                     L[t, s] = k_s + sum_{s<r<t} w_r (s < t),
                                                     L[t, t] = u + k_t; readout_t = sum_s A v_s
=============================  ====================  ==========================================

xLSTM's mLSTM (``mlstm``, hooks.scan.mlstm; HF ``xlstm``) has the GLA shapes, with a normaliser n_t
``[K]`` and a max-state m_t (a scalar) per head beside its matrix memory, all three stabilised as HF computes
them: m_t = max(decay_t + m_{t-1}, beta_t), f'_t = exp(decay_t + m_{t-1} - m_t), i'_t = exp(beta_t - m_t)
(the unstabilised memory is exp(m_t) S_t). n_t and m_t have no hook names: they depend on k, decay and beta
only (`hooks.scan.mlstm.norm_states`), and a ``rec.state`` patch keeps them:

=============================  ====================  ==========================================
``blocks.{i}.rec.q`` / ``k``   [B, T, H, K]          query / key as the layer forms them (scale
                                                     K^-0.5 applied to q in the readout)
``blocks.{i}.rec.decay``       [B, T, H]             log forget gate, logsigmoid(f_t)
``blocks.{i}.rec.beta``        [B, T, H]             log input gate i_t (soft-capped pre-
                                                     activation; the write strength is exp(i_t))
``blocks.{i}.rec.state``       [B, T(P), H, K, V]    the stabilised memory S_t, float32 (HF's
                                                     cache C after token t)
``blocks.{i}.rec.readout``     [B, T, H, V]          h_t, before the per-head norm and out gate
``blocks.{i}.rec.pattern``     [B, H, T(P), T]       A[t, s] = scale (q_t . k_s) exp(sum_{s<j<=t}
                                                     decay_j + beta_s - m_t) / den_t: exact, as
                                                     den_t does not depend on v
=============================  ====================  ==========================================

RWKV-7 (``rwkv7``, hooks.scan.rwkv7; fla's ``RWKV7Attention``) is a delta rule whose state transition is a
diagonal decay plus a rank-1 term, M_t = diag(exp(decay_t)) + b_t a_t^T (fla's ``dplr`` form; RWKV-7 writes it
transposed, S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T in its [V, K] layout)::

    RWKV7   S_t = diag(a_t) S_{t-1} + b_t (rec.a_t^T S_{t-1}) + k_t v_t^T   (a_t = exp(decay_t) per key dim)
    readout_t = S_t^T (scale q_t)   (scale 1)

It has the GLA shapes, no ``rec.beta``, and two names of its own (RWKV-7 layers only):

=============================  ====================  ==========================================
``blocks.{i}.rec.q``           [B, T, H, K]          the receptance r
``blocks.{i}.rec.decay``       [B, T, H, K]          log decay w_t = -exp(-1/2) sigmoid(w_lora)
``blocks.{i}.rec.a``           [B, T, H, K]          the transition's rank-1 factors: fla's layer
``blocks.{i}.rec.b``           [B, T, H, K]          passes a = -kk, b = kk (.) alpha (kk: the
                                                     l2-normalised removal key, alpha the in-
                                                     context learning rate), so M_t = diag(a_t) -
                                                     (kk (.) alpha) kk^T
``blocks.{i}.rec.readout``     [B, T, H, V]          S_t^T r_t, before the per-head GroupNorm and
                                                     the bonus term (r_t . (r_k (.) k_t)) v_t
``blocks.{i}.rec.write_k/v``   [B, T(P), H, K / V]   (k_t, v_t): S_t = M_t S_{t-1} + k_t v_t^T
=============================  ====================  ==========================================

A hook on ``rec.state`` that changes S_t makes the recurrence continue from the changed state:
later tokens of that layer, and all later layers, see the change.
"""
from __future__ import annotations

import difflib
import operator
import re

RESID = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")
ATTN = ("q", "k", "v", "pattern", "head_out")
REC = ("q", "k", "v", "decay", "beta", "a", "b", "state", "readout", "pattern", "write_k", "write_v")
BRANCHES = ("attn", "rec")  # parallel layers: blocks.{i}.attn.out / rec.out, each branch's term of mixer_out

HOOK_NAMES = (["embed"] + [f"blocks.{{i}}.{s}" for s in RESID] + [f"blocks.{{i}}.attn.{s}" for s in ATTN]
              + [f"blocks.{{i}}.rec.{s}" for s in REC] + [f"blocks.{{i}}.{b}.out" for b in BRANCHES])

_NAME = re.compile(r"blocks\.(\d+)\.(?:(attn|rec)\.)?(\w+)")


class HookError(ValueError):
    """A mistake in how hooks was called (a bad argument, tokens, positions, hook return value): the
    message names the bad value and what is valid."""


class HookNameError(HookError, KeyError):
    """An unknown hook name (or one a cache does not hold); a KeyError too."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class HookPoint(str):
    """The name a hook function receives: a plain ``str`` (``fn(x, name)``) that also serves
    TransformerLens-style functions ``fn(tensor, hook)``: ``hook.name`` and ``hook.layer()``."""

    @property
    def name(self) -> str:
        return str(self)

    def layer(self) -> int:
        p = parse(self)
        if not p or p[0] is None:
            raise HookError(f"hook point '{self}' belongs to no layer")
        return p[0]


def parse(name: str):
    """'blocks.3.rec.state' -> (3, 'rec', 'state'); 'blocks.3.resid_pre' -> (3, None, 'resid_pre');
    'embed' -> (None, None, 'embed'). Does not check the model has that site."""
    if name == "embed":
        return None, None, "embed"
    m = _NAME.fullmatch(name)
    if not m:
        return None
    return int(m.group(1)), m.group(2), m.group(3)


def valid_names(layers) -> list[str]:
    """Concrete names for a model given its LayerInfo list (see hooks.adapters.base). A recurrent
    layer has the rec.* names of the scan inputs its family has (GLA: no beta), and the factored writes
    (rec.write_k / rec.write_v) where its state is a decayed sum of rank-1 writes; a parallel layer (one
    whose LayerInfo names ``branches``) has ``attn.out`` and ``rec.out``."""
    from hooks.recurrence import get_family  # imported here: `hooks.names` alone stays free of torch
    out = ["embed"]
    for L in layers:
        out += [f"blocks.{L.index}.{s}" for s in RESID]
        if L.attn is not None:
            out += [f"blocks.{L.index}.attn.{s}" for s in ATTN]
        if L.rec is not None:
            fam = get_family(L.rec_family)
            has = fam.inputs + ("state", "readout", "pattern") + (("write_k", "write_v") if fam.writes else ())
            out += [f"blocks.{L.index}.rec.{s}" for s in REC if s in has]
        out += [f"blocks.{L.index}.{b}.out" for b in BRANCHES if b in getattr(L, "branches", {})]
    return out


def check(names, valid: list[str]) -> list[str]:
    """Raise HookNameError naming each unknown name, its close matches and the valid templates."""
    vs = set(valid)
    for n in names:
        if not isinstance(n, str):
            raise HookNameError(f"hook names are strings such as 'blocks.0.resid_pre', got {n!r} "
                                f"({type(n).__name__}); valid names: {', '.join(HOOK_NAMES)} (i = layer index)")
        if n not in vs:
            close = difflib.get_close_matches(n, valid, n=3, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            p = parse(n)
            why = ""
            if p and p[0] is not None:
                n_layers = sum(1 for v in valid if v.endswith(".resid_pre"))
                if p[0] >= n_layers:
                    why = f" (layer {p[0]} out of range 0..{n_layers - 1})"
                elif p[1] in ("rec", "attn") and not any(v.startswith(f"blocks.{p[0]}.{p[1]}.") for v in vs):
                    why = f" (layer {p[0]} has no {'recurrent mixer' if p[1] == 'rec' else 'attention'})"
                elif p[1] in BRANCHES and p[2] == "out":
                    why = (f" (layer {p[0]} is not a parallel layer: attn.out / rec.out exist only where attention "
                           "and a recurrent mixer run side by side; its mixer's output is mixer_out)")
            raise HookNameError(f"unknown hook name '{n}'{why}{hint}; valid names: "
                                f"{', '.join(HOOK_NAMES)} (i = layer index)")
    return list(names)


# TransformerLens' names for our sites (README, "Handing over other frameworks' models")
TL_ALIASES = {"hook_embed": "embed", "attn_out": "mixer_out", "hook_attn_out": "mixer_out", "hook_mlp_out": "mlp_out",
              "rot_q": "attn.q", "rot_k": "attn.k", "z": "attn.head_out", "hook_z": "attn.head_out",
              "pattern": "attn.pattern", "hook_pattern": "attn.pattern"}


def sites() -> list[str]:
    """Every site a name can end in: ``embed``, the residual sites, ``attn.*``, ``rec.*`` and the branch
    outputs ``attn.out`` / ``rec.out`` of parallel layers."""
    return ["embed", *RESID, *(f"attn.{s}" for s in ATTN), *(f"rec.{s}" for s in REC), *(f"{b}.out" for b in BRANCHES)]


def name(site: str, layer=None):
    """The hook name of ``site`` at ``layer``: ``name('resid_pre', 3)`` -> ``'blocks.3.resid_pre'``,
    ``name('rec.state', 2)``, ``name('embed')``; a list of layers (or a range) gives a list of names.
    TransformerLens' site names are accepted too (``hook_resid_pre``, ``attn_out``, ``z``,
    ``pattern``, ...). Negative layers need the model: `hooks.HookedModel.name`."""
    if not isinstance(site, str):
        raise HookError(f"site must be a string such as 'resid_pre', got {site!r}")
    s = site.removeprefix("blocks.").removeprefix("attn.hook_")
    s = TL_ALIASES.get(s, TL_ALIASES.get(site, s.removeprefix("hook_")))
    valid = sites()
    if s not in valid:
        close = difflib.get_close_matches(site, valid, n=3, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise HookNameError(f"unknown site '{site}'{hint}; valid sites: {', '.join(valid)}")
    if s == "embed":
        if layer is not None:
            raise HookError(f"'embed' has no layer (got layer={layer!r})")
        return "embed"
    if layer is None:
        raise HookError(f"site '{s}' needs a layer: name('{s}', 3) -> 'blocks.3.{s}'")
    if not isinstance(layer, int) and hasattr(layer, "__iter__") and not isinstance(layer, str):
        return [name(s, i) for i in layer]
    i = as_int(layer, "layer")
    if i < 0:
        raise HookError(f"layer {i}: a negative layer needs the model's depth; use hm.name('{s}', {i})")
    return f"blocks.{i}.{s}"


def as_int(v, what: str) -> int:
    """``v`` as a Python int if it is an integer (int, numpy integer, integer 0-d tensor), else a
    HookError naming it. Floats are refused, not truncated; so are bools."""
    if isinstance(v, bool) or "bool" in str(getattr(v, "dtype", "")):
        raise HookError(f"{what} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise HookError(f"{what} must be an integer, got {v!r} ({type(v).__name__})") from None


def select(names, valid: list[str], default) -> list[str]:
    """The names a ``names=`` argument means: None -> ``default``; a string -> that one name; a
    callable -> every valid name it accepts (``names=lambda n: n.endswith('mixer_out')``); an
    iterable -> its names. Unknown names raise HookNameError (`check`)."""
    if names is None:
        return list(default)
    if isinstance(names, str):
        names = [names]
    elif callable(names):
        names = [n for n in valid if names(n)]
    elif hasattr(names, "__iter__"):
        names = list(names)
    else:
        raise HookError(f"names must be a hook name, a list of them or a filter function, got {names!r}")
    return check(names, valid)
