"""Per-token writes of the recurrent families, kept factored: what token t adds to the state.

    GDN     S_t = a_t S_{t-1} + k_t d_t^T,   d_t = beta_t (v_t - a_t S_{t-1}^T k_t)   (delta-rule write)
    GLA     S_t = diag(a_t) S_{t-1} + k_t v_t^T                                       (a_t per key dim)
    Mamba2  S_t = a_t S_{t-1} + k_t (beta_t v_t)^T

with ``a_t = exp(decay_t)`` in the hook names (`hooks.names`). The write of token t is the rank-1
outer product ``key_t val_t^T`` ([H, K, V] per token); `factored` returns its two factors
(key ``[B, T, H, K]``, value ``[B, T, H, V]``), the numbers the hook names ``rec.write_k`` /
``rec.write_v`` give (the algebra is the families' own, `hooks.scan.family.Family.write_factors`). Only
GDN's value factor needs the previous state: it is computed here from the cached ``rec.state`` (S_{t-1};
S_{-1} = 0 for a run without an initial state). Mamba1 (per-channel states ``[D, N]``) is not covered
here yet.
"""
from __future__ import annotations

from hooks.recurrence import get_family
from hooks.scan.family import previous as previous_states  # noqa: F401  (S_{t-1} for every t; public here)

FAMILIES = ("gdn", "gla", "mamba2")


def _check(family: str):
    if family not in FAMILIES:
        raise NotImplementedError(f"factored writes for the '{family}' family are not implemented; "
                                  f"supported: {', '.join(FAMILIES)}")


def needs(family: str) -> list[str]:
    """The ``rec.*`` hook-name suffixes `factored` reads for ``family``."""
    _check(family)
    return {"gdn": ["k", "v", "beta", "decay", "state"], "gla": ["k", "v"],
            "mamba2": ["k", "v", "beta"]}[family]


def decayed(family: str, S, decay):
    """a_t S_{t-1}: S ``[..., H, K, V]``, decay ``[..., H]`` (GLA ``[..., H, K]``), in float32
    (`hooks.scan.family.Family.decayed`)."""
    _check(family)
    return get_family(family).decayed({"decay": decay}, S)


def write_value(family: str, S_prev, k, v, beta=None, decay=None):
    """The value factor of one token's write given the state before it (shapes ``[..., H, *]``):
    GDN d_t = beta_t (v_t - a_t S_{t-1}^T k_t); GLA v_t; Mamba2 beta_t v_t (the family's own
    `hooks.scan.family.Family.write_factors`, which the hook name ``rec.write_v`` gives)."""
    _check(family)
    return get_family(family).write_factors({"k": k, "v": v, "beta": beta, "decay": decay}, S_prev)[1]


def gdn_delta(k, v, beta, decay, states, initial_state=None):
    """GDN's delta-rule write d_t = beta_t (v_t - a_t S_{t-1}^T k_t) for every token, ``[B, T, H, V]``,
    from the cached canonical inputs (``rec.k`` after its l2-norm, ``rec.v``, ``rec.beta``,
    ``rec.decay`` = log a_t) and the cached states ``rec.state`` at every position."""
    return write_value("gdn", previous_states(states.float(), initial_state), k, v, beta, decay)


def factored(family: str, cache, layer: int):
    """(key [B, T, H, K], value [B, T, H, V]) of every token's write in block ``layer``, from a cache
    holding the `needs` names of that block (all positions); write_t = key_t value_t^T."""
    p = f"blocks.{layer}.rec."
    get = {n: cache[p + n] for n in needs(family)}
    prev = previous_states(get["state"].float()) if family == "gdn" else None
    return get["k"].float(), write_value(family, prev, get["k"], get["v"], get.get("beta"), get.get("decay"))


def outer(key, val):
    """The write as the state sees it: key val^T, ``[..., H, K, V]``."""
    return key.float()[..., :, None] * val.float()[..., None, :]
