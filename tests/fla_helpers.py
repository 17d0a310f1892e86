"""Shared helpers of the fla adapter tests (tests/test_adapters_fla_classes_standin.py,
tests/test_adapters_fla_rwkv7_standin.py, tests/test_adapters_fla_classes_interp.py): the tiny layer configs of
each kind, fla's layer files run with torch stand-ins for their imports (`Standins`), the float64 references
(`step_loop`, RWKV7's `rwkv7_reference`), the layers' actual inputs, and the row checks the three files make the
same way (a one-token decode step from the model's cache, a state patch continued, raising hooks and a failing
model leaving nothing behind)."""
import functools
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hooks.cache import Cache

_SPEC = importlib.util.find_spec("fla")
FLA = Path(_SPEC.submodule_search_locations[0]) if _SPEC else None  # the installed fla's source folder
LB = -0.6065306597126334  # RWKV7's decay bound: w = LB sigmoid(.)

# each kind's layer keyword arguments (hidden size 32): the stand-in layers and the fla configs take the same
LAYER_KW = {
    "deltanet": dict(num_heads=2),
    "deltanet_neg": dict(num_heads=2, allow_neg_eigval=True, qk_norm="sum", qk_activation="relu"),
    "kda": dict(num_heads=2, num_v_heads=4, head_dim=8),
    "kda_lb": dict(num_heads=2, head_dim=16, safe_gate=True, lower_bound=-5.0),
    "hgrn2": dict(expand_ratio=16),
    "rwkv7": dict(head_dim=8, decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8),
    "gdn": dict(num_heads=2, num_v_heads=4, head_dim=8),
    "gla": dict(num_heads=2),
}


@functools.lru_cache(maxsize=None)
def load_fla_file(rel, name):
    """fla's source file ``rel`` (e.g. ``ops/kda/naive.py``) loaded by path as module ``name`` (not registered)."""
    spec = importlib.util.spec_from_file_location(name, FLA / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def layer_utils():
    """Stand-ins for ``fla.layers.utils`` (dict caches keyed by layer index; no padding)."""
    def get_layer_cache(layer, past):
        return past.get(layer.layer_idx) if past is not None else None

    def update_layer_cache(layer, past, **state):
        if past is not None:
            past[layer.layer_idx] = state

    def unpad_hidden_states(h, cu_seqlens, attention_mask, q_len):
        assert attention_mask is None
        return h, None, cu_seqlens
    return dict(get_layer_cache=get_layer_cache, update_layer_cache=update_layer_cache,
                unpad_hidden_states=unpad_hidden_states, repad_hidden_states=lambda o, idx, b, t: o)


class Standins:
    """fla's layer files run with their imports answered by stand-ins (``stubs``: module name -> attributes),
    the modules a test file registers in sys.modules (hf_tiny.snapshot looks modules up there) and its models;
    `fixture` restores sys.modules and drops the models when the file's tests end."""

    def __init__(self, stubs):
        self.stubs, self.saved, self.models = stubs, {}, {}

    def register(self, mod):
        """Register ``mod`` in sys.modules for the file's tests."""
        self.saved.setdefault(mod.__name__, sys.modules.get(mod.__name__))
        sys.modules[mod.__name__] = mod
        return mod

    def restore(self):
        _put_back(self.saved)
        self.saved.clear()
        self.models.clear()

    def fixture(self):
        @pytest.fixture(scope="module", autouse=True)
        def _restore_standins():
            yield
            self.restore()
        return _restore_standins

    @contextmanager
    def stubbed(self):
        """sys.modules answers fla's imports with the stand-ins while a layer file runs; restored after."""
        names = ("fla", "fla.layers", "fla.ops", *self.stubs)
        saved = {n: sys.modules.get(n) for n in names}
        try:
            for n in names:
                sys.modules[n] = types.ModuleType(n)
                vars(sys.modules[n]).update(self.stubs.get(n, {}))
            yield
        finally:
            _put_back(saved)

    def layer_module(self, stem):
        """fla's ``fla/layers/<stem>.py``, run as the module ``fla.layers.<stem>`` (registered while the file's
        tests run)."""
        if f"fla.layers.{stem}" in self.saved:
            return sys.modules[f"fla.layers.{stem}"]
        mod = types.ModuleType(f"fla.layers.{stem}")
        mod.__file__ = str(FLA / "layers" / f"{stem}.py")
        with self.stubbed():
            exec(compile(Path(mod.__file__).read_text(), mod.__file__, "exec"), vars(mod))
        return self.register(mod)


def _put_back(saved):
    for n, m in saved.items():
        if m is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = m


def spice(m):
    """O(1) weights (every path matters to the logits), the gate parameters A_log / dt_bias ~ U(-1, 1)."""
    H.unit_scale_weights(m)
    with torch.no_grad():
        for blk in m.model.layers:
            for n in ("A_log", "dt_bias"):
                if hasattr(blk.attn, n):
                    getattr(blk.attn, n).uniform_(-1, 1)
    return m


# --- float64 references ------------------------------------------------------------------------------------------

def own_state(layer, S):
    """fla's cached recurrent state in our [K, V] layout (DeltaNet, RWKV7 keep [K, V]; KDA / HGRN2 [V, K])."""
    return S.float() if type(layer).__name__ in ("DeltaNet", "RWKV7Attention") else S.float().transpose(-1, -2)


def step_loop(q, k, v, g, beta, S=None, ab=None):
    """float64 per-token states S_t [B, T, H, K, V] and readouts: the delta rule S_t = a_t S_{t-1} + k_t (beta_t
    (v_t - (a_t S_{t-1})^T k_t))^T (beta None: S_t = a_t S_{t-1} + k_t v_t^T), a_t = exp(g_t) per head or per
    key dim; o_t = S_t^T q_t / sqrt(K). ``ab`` = (rec.a, rec.b): RWKV7, S_t = diag(a_t) S_{t-1} + b_t (rec.a_t^T
    S_{t-1}) + k_t v_t^T, o_t = S_t^T q_t."""
    q, k, v, g = (t.double() for t in (q, k, v, g))
    B, n, Hh, K = k.shape
    S = torch.zeros(B, Hh, K, v.shape[-1], dtype=torch.float64) if S is None else S.double()
    Ss, os_ = [], []
    for t in range(n):
        a = g[:, t].exp()
        if ab is not None:
            aS = torch.einsum("bhk,bhkv->bhv", ab[0][:, t].double(), S)
            S = a[..., None] * S + ab[1][:, t].double()[..., None] * aS[:, :, None] + k[:, t, :, :, None] * v[:, t, :, None]
            Ss.append(S)
            os_.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
            continue
        S = S * (a[..., None] if a.dim() == 3 else a[..., None, None])
        if beta is None:
            S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        else:
            d = beta[:, t].double()[..., None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
            S = S + k[:, t, :, :, None] * d[:, :, None, :]
        Ss.append(S)
        os_.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * K ** -0.5)
    return torch.stack(Ss, 1), torch.stack(os_, 1)


def rwkv7_reference(attn, x, v_first):
    """float64 per-token states [B, T, H, K, V] and readouts S_t^T r_t of RWKV7Attention ``attn`` on its input
    ``x`` [B, T, D], written from its parameters: token shift, mixes, r / w / k / v (value residual) / alpha /
    kk, the k_a update, S_t = diag(exp(w_t)) S - (kk alpha)_t (kk_t^T S) + k_t v_t^T. Returns (states, readouts,
    the scan inputs {q, k, v, decay, a, b})."""
    p = {n: t.double() for n, t in attn.named_parameters()}
    lin = lambda n, z: z @ p[f"{n}.weight"].T  # noqa: E731
    lora = lambda n, z, act: lin(f"{n}.lora.2", act(lin(f"{n}.lora.0", z))) + p.get(f"{n}.lora.2.bias", 0)  # noqa: E731
    x = x.double()
    dx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1) - x
    xr, xw, xk, xv, xa = (x + dx * p[f"x_{c}"] for c in "rwkva")
    r, k, v = lin("r_proj", xr), lin("k_proj", xk), lin("v_proj", xv)
    w = LB * torch.sigmoid(lora("w_lora", xw, torch.tanh))
    if attn.layer_idx:
        v = torch.lerp(v, v_first.double(), torch.sigmoid(lora("v_lora", xv, lambda z: z)))
    alpha = torch.sigmoid(lora("a_lora", xa, lambda z: z))
    B, n, Hh, K = *x.shape[:2], attn.num_heads, attn.head_dim
    hd = lambda z: z.view(B, n, Hh, -1)  # noqa: E731
    kk = F.normalize(hd(k * p["k_k"]), dim=-1)
    k = hd(k * (1 + (alpha - 1) * p["k_a"]))
    r, w, v, alpha = hd(r), hd(w), hd(v), hd(alpha)
    S = torch.zeros(B, Hh, K, v.shape[-1], dtype=torch.float64)
    Ss, os_ = [], []
    for t in range(n):
        rem = torch.einsum("bhk,bhkv->bhv", kk[:, t], S)
        S = w[:, t].exp()[..., None] * S - (kk[:, t] * alpha[:, t])[..., None] * rem[:, :, None] \
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        Ss.append(S)
        os_.append(torch.einsum("bhkv,bhk->bhv", S, r[:, t]))
    return torch.stack(Ss, 1), torch.stack(os_, 1), dict(q=r, k=k, v=v, decay=w, a=-kk, b=kk * alpha)


def layer_inputs(m, x, keys, idx=None):
    """{i: the keyword arguments ``keys`` (e.g. hidden_states, v_first) that layer i's mixer was called with}
    in a plain forward on tokens ``x`` (every layer, or those of ``idx``)."""
    seen, hs = {}, []
    for i, blk in enumerate(m.model.layers):
        if idx is None or i in idx:
            hs.append(blk.attn.register_forward_pre_hook(
                lambda mod, a, kw, i=i: seen.__setitem__(i, tuple(kw.get(k) for k in keys)), with_kwargs=True))
    try:
        with torch.no_grad():
            m(input_ids=x, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return seen


def assert_rwkv7_layer(c, attn, i, h, v_first, cached_state):
    """Layer i's captured ``blocks.{i}.rec.state`` / ``.readout`` and scan inputs equal `rwkv7_reference` of its own
    input ``h`` / ``v_first`` (float64; 1e-5 abs, 1e-4 rel), and its last state equals fla's ``cached_state``."""
    p = f"blocks.{i}.rec"
    S_ref, o_ref, ins = rwkv7_reference(attn, h, v_first)
    torch.testing.assert_close(c[f"{p}.state"].double(), S_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c[f"{p}.readout"].double(), o_ref, atol=1e-5, rtol=1e-4)
    for s, ref_in in ins.items():
        torch.testing.assert_close(c[f"{p}.{s}"].double(), ref_in, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c[f"{p}.state"][:, -1], own_state(attn, cached_state), atol=1e-5, rtol=1e-5)


# --- row checks ----------------------------------------------------------------------------------------------------

def check_decode_step(m, hm, x, i):
    """One-token decoding from the model's cache (a prefill of all but the last token of ``x``) under hooks: the
    step's state of layer ``i`` (one position) is the full run's last state and the model's cached state after
    the step (the cache's layout converted)."""
    name = f"blocks.{i}.rec.state"
    with torch.no_grad():
        pkv = m(input_ids=x[:, :-1], use_cache=True).past_key_values
        cache = Cache()
        with hm.hooks(cache_names=[name], cache=cache):
            step = m(input_ids=x[:, -1:], use_cache=True, past_key_values=pkv).past_key_values
        full = hm.run_with_cache(x, names=[name])[1][name]
    assert cache[name].shape[1] == 1
    torch.testing.assert_close(cache[name][:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache[name][:, 0], own_state(m.model.layers[i].attn, step[i]["recurrent_state"]),
                               atol=1e-5, rtol=1e-5)


def check_state_patch(m, hm, x, other_x, i, t):
    """S_t := the state of tokens ``other_x`` at t (layer ``i``): states and readouts from t on are the float64
    loop continued from it on the captured scan inputs; the logits before t are bit-identical, every later
    position moves."""
    p = f"blocks.{i}.rec"
    ins = [s for s in ("q", "k", "v", "decay", "beta", "a", "b") if f"{p}.{s}" in hm.hook_names]
    with torch.no_grad():
        ref = m(input_ids=x, use_cache=False).logits
        other = hm.run_with_cache(other_x, names=[f"{p}.state"])[1][f"{p}.state"]
        out, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in ins + ["state", "readout"]],
                                   hooks=[(f"{p}.state", H.put_state(other, t))])
    q, k, v, g = (c[f"{p}.{s}"][:, t + 1:] for s in ("q", "k", "v", "decay"))
    beta = c[f"{p}.beta"][:, t + 1:] if "beta" in ins else None
    ab = (c[f"{p}.a"][:, t + 1:], c[f"{p}.b"][:, t + 1:]) if "a" in ins else None
    S_ref, o_ref = step_loop(q, k, v, g, beta, S=other[:, t], ab=ab)
    assert torch.equal(c[f"{p}.state"][:, t], other[:, t])
    torch.testing.assert_close(c[f"{p}.state"][:, t + 1:].double(), S_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c[f"{p}.readout"][:, t + 1:].double(), o_ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(out[:, :t], ref[:, :t])
    assert (out[:, t:] - ref[:, t:]).abs().amax(-1).min() > 1e-6


def kernel_globals(m, names=None):
    """The kernels of the module of ``m``'s mixer class (``names``, or every global named chunk_* /
    fused_recurrent_*) and a function listing those of them that are no longer the same objects."""
    g = type(m.model.layers[0].attn).forward.__globals__
    kernels = {n: g[n] for n in (names or [n for n in g if n.startswith(("chunk_", "fused_recurrent_"))])}
    return kernels, lambda: [n for n, f in kernels.items() if g[n] is not f]


def check_errors_leave_nothing(m, hm, x, names, leftovers, bad=None):
    """A hook that raises at each of ``names`` while every hook name is captured, then (``bad``) a failure inside
    the model with every hook on: ``bad`` a module, whose forward pre-hook raises, or token ids the model fails
    on. Each raises and leaves no hook, attribute or patched global behind (`hf_tiny.assert_clean`,
    ``leftovers()`` empty); the logits of ``x`` are those of before."""
    snap = H.snapshot(m)
    with torch.no_grad():
        ref = m(input_ids=x, use_cache=False).logits
    for name in names:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            hm.run_with_cache(x, names=hm.hook_names, hooks=[(name, H.boom)])
        H.assert_clean(m, snap)
        assert leftovers() == []
    if isinstance(bad, torch.Tensor):
        with pytest.raises(Exception), torch.no_grad():
            hm.run_with_cache(bad, names=hm.hook_names)
    elif bad is not None:
        def fail(mod, a):
            raise ValueError("inside the model")
        h = bad.register_forward_pre_hook(fail)
        try:
            with pytest.raises(ValueError, match="inside the model"), torch.no_grad():
                hm.run_with_cache(x, names=hm.hook_names)
        finally:
            h.remove()
    H.assert_clean(m, snap)
    assert leftovers() == []
    with torch.no_grad():
        assert torch.equal(m(input_ids=x, use_cache=False).logits, ref)
