"""The Zamba (v1) Mamba mixer's forward with its heads folded into one Mamba1 scan call, for rec.* hooks.

transformers' ``ZambaMambaMixer`` is Mamba1 (S6) with ``n_mamba_heads`` heads H: ``in_proj`` gives x
and the gate z (interleaved per channel), one causal conv runs over all D = H * Dh channels, then
each head h has its own ``x_proj`` (dt, B_t, C_t), ``dt_proj``, A ``[Dh, N]`` and D ``[Dh]``, and its
own ``mamba_selective_scan`` call; the heads' outputs, each gated by silu(z), are concatenated
(channel d = h * Dh + j) before ``out_proj``. The H scans are independent Mamba1 scans whose
channels share their head's B_t, C_t, i.e. together one Mamba1 scan over the D channels with B, C
given per group of Dh channels (`hooks.scan.mamba1`'s grouped form, ``[B, T, H, N]``). The math is
Mamba1's; only B, C are per head. State layout: ``[B, T, D, N]``, heads folded (d = h * Dh + j);
HF's cache keeps the same numbers as ``[B, H, Dh, N]``.

While rec.* names are hooked on a layer, the mixer's ``forward`` is replaced (on that instance,
always restored) by `_forward`: HF's forward op for op, with the layer's H scan calls handed to
the wrapper as ONE call (`patch_zamba_scan`): x ``[B, T, D]``, dt ``[B, T, D]`` (after
``dt_proj_bias`` and softplus, HF's ops in its order), A ``[D, N]``, B / C ``[B, T, H, N]``, D
``[D]``. Its ``call`` runs the modeling module's own ``mamba_selective_scan`` once per head on HF's
own per-head tensors (no bias, softplus or gate inside), so capture changes no output bit; the
gate silu(z) is applied after the wrapper, so ``rec.readout`` is sum_n h_t C_t + D x_t, before it.

Supported: a full-sequence forward without cache, or a prefill into an empty cache (the final
state goes to HF's cache as HF writes it); padding masks as in HF (padded positions are zeroed
before the scan). Continuing from a cache (decoding) raises NotImplementedError while rec.* hooks
are installed.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hooks.adapters.base import swap_attr
from hooks.adapters.hf_common import forward_globals
from hooks.scan import mamba1 as mamba1_scan


def is_zamba_mixer(mixer) -> bool:
    return hasattr(mixer, "n_mamba_heads") and hasattr(mixer, "x_proj_weight")


def _fold(t):
    """[H, B, Dh, T] -> [B, T, H * Dh] (channel d = h * Dh + j)."""
    H, b, Dh, T = t.shape
    return t.permute(1, 3, 0, 2).reshape(b, T, H * Dh)


def _ssm_inputs(mixer, xs):
    """HF's per-head scan inputs from the conv output ``xs`` ``[H, B, Dh, T]``: (dt ``[H, B, Dh, T]``
    after bias and softplus, B, C ``[H, B, T, N]``, A ``[H, Dh, N]``)."""
    N = mixer.ssm_state_size
    ssm = (mixer.x_proj_weight[:, None] @ xs).transpose(-1, -2)
    time_step, Bm, Cm = torch.split(ssm, [mixer.time_step_rank, N, N], dim=-1)
    time_step = mixer.dt_proj_weight[:, None] @ time_step.transpose(-1, -2)
    bias = mixer.dt_proj_bias.float() if mixer.dt_proj_bias is not None else None
    dts = []
    for h in range(mixer.n_mamba_heads):  # what mamba_selective_scan does with delta_bias, delta_softplus
        dt = time_step[h]
        if bias is not None:
            dt = dt + bias[h].to(dt.dtype)[..., None]
        dts.append(F.softplus(dt))
    return torch.stack(dts), Bm, Cm, -torch.exp(mixer.A_log.float())


def _head_scans(mixer, scan_fn, heads, output_final_state):
    """The modeling module's scan once per head; ``heads``: [(x, dt, A, B, C, D)] in its layout
    (x, dt ``[B, Dh, T]``, B, C ``[B, N, T]``). Returns (y ``[B, T, D]``, final ``[B, D, N]`` or None)."""
    ys, finals = [], []
    for x, dt, A, B, C, D in heads:
        r = scan_fn(x, dt, A, B, C, D=D, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=output_final_state, use_mambapy=False,
                    use_associative_scan=getattr(mixer, "use_associative_scan", False))
        y, f = r if output_final_state else (r, None)
        ys.append(y)
        finals.append(f)
    return torch.cat(ys, 1).transpose(1, 2), (torch.cat(finals, 1) if output_final_state else None)


def _scan_call(mixer, scan_fn, kw, own_heads):
    """``call`` for the wrapper: the model's own per-head scans (on HF's own tensors when the
    arguments are the ones handed out), our scan where the kernel has no such input."""
    H = mixer.n_mamba_heads

    def call(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, g=None, dt_decay=None, **unused):
        if initial_state is not None or g is not None or dt_decay is not None:  # the kernel has none of these
            return mamba1_scan.scan(x, dt, A, B, C, D, initial_state, output_final_state, g=g, dt_decay=dt_decay)
        if all(a is kw[n] for a, n in ((x, "x"), (dt, "dt"), (A, "A"), (B, "B"), (C, "C"), (D, "D"))):
            heads = own_heads
        else:
            Dh = x.shape[-1] // H
            sl = [slice(h * Dh, (h + 1) * Dh) for h in range(H)]
            heads = [(x[..., s].transpose(1, 2), dt[..., s].transpose(1, 2), A[s], B[:, :, h].transpose(1, 2),
                      C[:, :, h].transpose(1, 2), None if D is None else D[s]) for h, s in enumerate(sl)]
        return _head_scans(mixer, scan_fn, heads, output_final_state)
    return call


def _forward(mixer, wrapper, hidden_states, cache=None, attention_mask=None, **kwargs):
    """ZambaMambaMixer.forward (as in transformers 5.25) with its scans through ``wrapper(kw, call)``."""
    g = forward_globals(mixer)
    mask, conv, scan_fn = g["apply_mask_to_padding_states"], g["causal_conv1d_forward"], g["mamba_selective_scan"]
    if cache is not None and cache.get_recurrent_state(mixer.layer_idx, state_idx=0) is not None:
        raise NotImplementedError(
            f"{type(mixer).__name__} (layer {mixer.layer_idx}): rec.* hooks support a full-sequence forward without "
            "cache or a prefill into an empty cache; continuing from a cache (decoding) is not supported. Run the "
            "prompt in one forward with use_cache=False.")
    b, T, _ = hidden_states.shape
    dtype = hidden_states.dtype
    H, Dh = mixer.n_mamba_heads, mixer.mamba_head_dim
    hidden_states = mask(hidden_states, attention_mask)
    projected = mixer.in_proj(hidden_states).transpose(1, 2)
    xs, gate = projected.view(b, -1, 2, T).chunk(2, dim=2)
    xs = xs.squeeze(2).contiguous()
    gate = gate.reshape(b, H, Dh, T).transpose(0, 1)
    xs = conv(mixer.conv1d, xs, cache, mixer.layer_idx, activation=mixer.activation, **kwargs)
    xs = mask(xs.transpose(1, 2), attention_mask).transpose(1, 2)
    xs = xs.reshape(b, H, Dh, T).transpose(0, 1)                      # [H, B, Dh, T]
    dt, Bm, Cm, A = _ssm_inputs(mixer, xs)
    D = mixer.D.float()
    own_heads = [(xs[h], dt[h], A[h], Bm[h].transpose(1, 2), Cm[h].transpose(1, 2), D[h]) for h in range(H)]
    kw = dict(x=_fold(xs), dt=_fold(dt), A=A.reshape(H * Dh, -1), B=Bm.permute(1, 2, 0, 3),
              C=Cm.permute(1, 2, 0, 3), D=D.reshape(H * Dh), initial_state=None,
              output_final_state=cache is not None)
    y, final = wrapper(kw, _scan_call(mixer, scan_fn, kw, own_heads))
    y = y.transpose(1, 2)                                                 # [B, D, T], as HF continues
    scan_output = torch.cat([y[:, h * Dh:(h + 1) * Dh] * F.silu(gate[h]) for h in range(H)], dim=1)
    if cache is not None:
        cache.update_recurrent_state(final.reshape(b, H, Dh, -1), mixer.layer_idx)
    return mixer.out_proj(scan_output.transpose(1, 2).to(dtype))


@contextmanager
def patch_zamba_scan(mixer, wrapper):
    """While open, ZambaMambaMixer ``mixer`` runs `_forward` with ``wrapper`` (see the module docstring)."""
    def forward(hidden_states, cache=None, attention_mask=None, cache_params=None, **kwargs):
        # transformers >= 5.24 passes the cache as `cache`, earlier versions as `cache_params`
        return _forward(mixer, wrapper, hidden_states, cache=cache if cache is not None else cache_params,
                        attention_mask=attention_mask, **kwargs)
    with swap_attr(mixer, "forward", forward):
        yield
