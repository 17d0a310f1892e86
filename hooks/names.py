"""The hook-name vocabulary, one for every model family.

Shapes: B batch, T tokens (P when ``positions=`` selects P of them), D model width, H heads,
Hkv key/value heads (GQA), Dh head dim, K / V key / value dim of a recurrent state.

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
``blocks.{i}.rec.q``           [B, T, H, K]          recurrent query (GDN: after its l2-norm;
                                                     Mamba2: C)
``blocks.{i}.rec.k``           [B, T, H, K]          recurrent key (GDN: after l2-norm; Mamba2: B)
``blocks.{i}.rec.v``           [B, T, H, V]          recurrent value (Mamba2: x)
``blocks.{i}.rec.decay``       [B, T, H] or          log decay g_t (GLA: per key dim [B,T,H,K];
                               [B, T, H, K]          Mamba2: dt*A)
``blocks.{i}.rec.beta``        [B, T, H]             write strength (GDN: beta; Mamba2: dt);
                                                     absent for GLA
``blocks.{i}.rec.state``       [B, T(P), H, K, V]    state S_t after token t, float32
                                                     (Mamba2: h_t as [N, P])
``blocks.{i}.rec.readout``     [B, T, H, V]          scan output, as the layer consumes it
                                                     (S_t^T (scale q_t); Mamba2 adds D x_t)
=============================  ====================  ==========================================

Recurrences, in these names (``a_t = exp(decay_t)``)::

    GDN     S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T
    GLA     S_t = diag(a_t) S_{t-1} + k_t v_t^T
    Mamba2  S_t = a_t S_{t-1} + beta_t k_t v_t^T
    readout_t = S_t^T (scale q_t)
    Mamba1  S_t[d, n] = a_t[d, n] S_{t-1}[d, n] + beta_t[d] v_t[d] k_t[n]
    readout_t[d] = sum_n S_t[d, n] q_t[n] + D[d] v_t[d]

Mamba1 (selective scan; jamba, mamba, falcon_mamba, mamba-ssm's Mamba layers) has its own
shapes. Its state is one scalar recurrence per channel d (D = d_inner) and state dim n, i.e. GLA
with one head per channel, K = N and V = 1; the state is kept as ``[D, N]`` (HF's and
mamba-ssm's ``ssm_state`` layout, ``[B, D, N]``) rather than ``[H=D, K=N, V=1]``:

=============================  ====================  ==========================================
``blocks.{i}.rec.q``           [B, T, N]             C_t (shared by all channels)
``blocks.{i}.rec.k``           [B, T, N]             B_t
``blocks.{i}.rec.v``           [B, T, D]             x_t (after the conv)
``blocks.{i}.rec.beta``        [B, T, D]             dt_t (after bias and softplus)
``blocks.{i}.rec.decay``       [B, T, D, N]          dt_t[d] A[d, n] (formed only when hooked:
                                                     it is as large as all the states)
``blocks.{i}.rec.state``       [B, T(P), D, N]       h_t, float32
``blocks.{i}.rec.readout``     [B, T, D]             sum_n h_t C_t + D x_t, before the z gate
=============================  ====================  ==========================================

A hook on ``rec.state`` that changes S_t makes the recurrence continue from the changed state:
later tokens of that layer, and all later layers, see the change.
"""
from __future__ import annotations

import difflib
import re

RESID = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")
ATTN = ("q", "k", "v", "pattern", "head_out")
REC = ("q", "k", "v", "decay", "beta", "state", "readout")

HOOK_NAMES = (["embed"] + [f"blocks.{{i}}.{s}" for s in RESID] + [f"blocks.{{i}}.attn.{s}" for s in ATTN]
              + [f"blocks.{{i}}.rec.{s}" for s in REC])

_NAME = re.compile(r"blocks\.(\d+)\.(?:(attn|rec)\.)?(\w+)")


class HookNameError(KeyError):
    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0])


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
    layer has the rec.* names of the scan inputs its family has (GLA: no beta)."""
    from hooks.recurrence import get_family  # imported here: `hooks.names` alone stays free of torch
    out = ["embed"]
    for L in layers:
        out += [f"blocks.{L.index}.{s}" for s in RESID]
        if L.attn is not None:
            out += [f"blocks.{L.index}.attn.{s}" for s in ATTN]
        if L.rec is not None:
            has = get_family(L.rec_family).inputs
            out += [f"blocks.{L.index}.rec.{s}" for s in REC if s in has or s in ("state", "readout")]
    return out


def check(names, valid: list[str]) -> list[str]:
    """Raise HookNameError naming each unknown name, its close matches and the valid templates."""
    vs = set(valid)
    for n in names:
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
            raise HookNameError(f"unknown hook name '{n}'{why}{hint}; valid names: "
                                f"{', '.join(HOOK_NAMES)} (i = layer index)")
    return list(names)
