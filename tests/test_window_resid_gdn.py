"""The window path's GDN scans at few shapes (`interp.zoo.gdn.scan_rows`, issue #26): fla's Triton kernels compile and
autotune anew for each batch size (chunk_local_cumsum) and each bucket of rows x positions (in-kernel l2norm), so
on the kernel path the window scans get q, k normalised beforehand and their rows back to back in one row (fla's
variable-length form, checked against the batched call on each configuration's first use) or, for a scan that does
not take that form, padded to `row_bucket` sizes; the prefix states advance by the step recurrence over few positions.
Run here on CPU through the pure-torch scan (``FEW_SHAPES = True``): both forms equal the plain scan, the first-use
check catches a wrong form, and resid_pre sweeps on gdn75-like models (every layer; one direction or both; left- and
right-padded pairs; next to mixer_out and rec.state, which resume the same way) equal the same sweep without it and
on the general path; spies show resid_pre on a GDN layer runs on the window (that layer resuming from the unchanged
run's state and last conv inputs, not re-scanning its prefix) with scans in those forms only."""
import functools
import importlib

import numpy as np
import pytest
import torch

import hooks
from hooks.scan import gdn as gdn_scan
from interp import tasks as T
from interp.patching.window import STEP_MAX
from interp.zoo import gdn as zgdn
from interp.zoo.randinit import random_zoo
from test_window_padded import per_pair

sweep_mod = importlib.import_module("interp.patching.sweep")   # (interp.patching.sweep is also the function)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_row_bucket_sizes():
    sizes = [zgdn.row_bucket(n) for n in range(1, 513)]
    assert all(n <= b <= max(n, 1.5 * n) for n, b in zip(range(1, 513), sizes))
    assert sorted(set(sizes)) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]


def scan_args(B, Tn=11, H=2, K=4, V=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)   # noqa: E731
    return dict(q=r(B, Tn, H, K), k=r(B, Tn, H, K), v=r(B, Tn, H, V), g=-torch.rand(B, Tn, H, generator=g),
                beta=torch.rand(B, Tn, H, generator=g), scale=K ** -0.5, use_qk_l2norm_in_kernel=True), r(B, H, K, V)


@pytest.mark.parametrize("B", [1, 5, 7, 9])
@pytest.mark.parametrize("with_state", [False, True])
def test_scan_rows_equals_the_scan(B, with_state, monkeypatch):
    monkeypatch.setattr(zgdn, "FEW_SHAPES", True)
    kw, S0 = scan_args(B)
    S0 = S0 if with_state else None
    seen = []

    def fn(**a):
        seen.append((a["q"].shape[0], a["use_qk_l2norm_in_kernel"], a["initial_state"] is None))
        return gdn_scan.chunk_torch(**a)
    o, S = zgdn.scan_rows(fn, kw, initial_state=S0, output_final_state=True)
    want_o, want_S = gdn_scan.naive(**{k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()},
                                    initial_state=None if S0 is None else S0.double(), output_final_state=True)
    assert seen == [(zgdn.row_bucket(B), False, S0 is None)]      # padded, normalised before the kernel
    assert o.shape == want_o.shape and S.shape == want_S.shape
    torch.testing.assert_close(o.double(), want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S.double(), want_S.double(), rtol=1e-5, atol=1e-5)
    plain_o, plain_S = gdn_scan.chunk_torch(**kw, initial_state=S0, output_final_state=True)
    assert torch.equal(o, plain_o) and torch.equal(S, plain_S)   # the rows' own results, to the bit here


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("with_state", [False, True])
def test_scan_rows_back_to_back_equals_the_scan(B, with_state, monkeypatch):
    """A scan that takes the variable-length form (`hooks.scan.gdn.scan`) gets the rows back to back in one row."""
    monkeypatch.setattr(zgdn, "FEW_SHAPES", True)
    monkeypatch.setattr(zgdn, "CHECKED", {})
    kw, S0 = scan_args(B, Tn=70)                              # (longer than a chunk: 64)
    S0 = S0 if with_state else None
    seen = []

    @functools.wraps(gdn_scan.scan)
    def fn(**a):
        cu = a.get("cu_seqlens")
        seen.append((tuple(a["q"].shape[:2]), a["use_qk_l2norm_in_kernel"], None if cu is None else cu.tolist()))
        return gdn_scan.scan(**a)
    o, S = zgdn.scan_rows(fn, kw, initial_state=S0, output_final_state=True)
    back = ((1, B * 70), False, list(range(0, (B + 1) * 70, 70)))
    assert seen == [((B, 70), False, None), back, back]         # the first use's check (both ways), then served
    want_o, want_S = gdn_scan.naive(**{k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()},
                                    initial_state=None if S0 is None else S0.double(), output_final_state=True)
    torch.testing.assert_close(o.double(), want_o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S.double(), want_S.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrong", [False, True])
def test_back_to_back_checked_on_first_use(wrong, monkeypatch):
    """The variable-length form serves a configuration once its first use matched the batched call; a scan whose
    form differs (here: it drops the initial states) warns and its windows run batched (padded), still right."""
    monkeypatch.setattr(zgdn, "FEW_SHAPES", True)
    monkeypatch.setattr(zgdn, "CHECKED", {})
    kw, S0 = scan_args(3)
    calls = []

    @functools.wraps(gdn_scan.scan)
    def fn(**a):
        calls.append(a.get("cu_seqlens") is not None)
        if wrong and a.get("cu_seqlens") is not None:
            a["initial_state"] = None
        return gdn_scan.scan(**a)
    want_o, want_S = gdn_scan.chunk_torch(**kw, initial_state=S0, output_final_state=True)
    for _ in range(2):
        if wrong and not calls:
            with pytest.warns(UserWarning, match="variable-length form differs"):
                o, S = zgdn.scan_rows(fn, kw, initial_state=S0, output_final_state=True)
        else:
            o, S = zgdn.scan_rows(fn, kw, initial_state=S0, output_final_state=True)
        torch.testing.assert_close(o, want_o, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(S, want_S, rtol=1e-5, atol=1e-5)
    assert calls == ([False, True, False, False] if wrong else [False, True, True, True])
    assert list(zgdn.CHECKED.values()) == [not wrong]


def test_back_to_back_check_on_16_bit_inputs(monkeypatch):
    """bf16 windows: the two forms may round an output either way at one bf16 ulp; the check passes them (16-bit
    tolerance) and the results are the batched call's to bf16 rounding."""
    monkeypatch.setattr(zgdn, "FEW_SHAPES", True)
    monkeypatch.setattr(zgdn, "CHECKED", {})
    kw, S0 = scan_args(4, Tn=20)
    kw = {k: v.bfloat16() if torch.is_tensor(v) and k in ("q", "k", "v") else v for k, v in kw.items()}
    o, S = zgdn.scan_rows(gdn_scan.scan, kw, initial_state=S0, output_final_state=True)
    assert list(zgdn.CHECKED.values()) == [True] and o.dtype == torch.bfloat16
    want_o, want_S = gdn_scan.chunk_torch(**zgdn.kernel_inputs(kw), initial_state=S0, output_final_state=True)
    torch.testing.assert_close(o.float(), want_o.float(), rtol=2e-2, atol=2e-2 * float(want_o.float().abs().max()))
    torch.testing.assert_close(S, want_S, rtol=1e-4, atol=1e-4)


def assert_scaled(got, want, what):
    """Equal NaNs, and every value within 1e-5 of the metric's scale (its largest magnitude)."""
    for m in ("ld", "prob", "kl"):
        assert np.array_equal(np.isnan(got[m]), np.isnan(want[m])), (what, m)
        scale = max(1.0, float(np.nanmax(np.abs(want[m]))))
        err = float(np.nanmax(np.abs(got[m] - want[m])))
        assert err <= 1e-5 * scale, (what, m, err, scale)


class Spy:
    """Counts, on one model: the window units by (site, layer); each GDN mixer's forward_window calls (tail_only,
    prefix inputs given); every GDN scan's batch size, in-kernel l2norm flag, whether it carried pad rows and its
    sequences in the variable-length form (None: not that form); the prefix steps (`Prefix` by the step recurrence)
    by their positions. ``varlen=False``: the spied scans do not say they take the variable-length form."""

    def __init__(self, model, monkeypatch, varlen=True):
        self.units, self.windows, self.scans, self.steps, self.varlen = [], [], [], [], varlen
        real_naive = gdn_scan.naive

        def naive(q, *a, **k):
            self.steps.append(q.shape[1])
            return real_naive(q, *a, **k)
        monkeypatch.setattr(gdn_scan, "naive", naive)
        real_unit = sweep_mod._win_unit
        layer_of = {id(b.mixer): i for i, b in enumerate(model.blocks)}

        def unit(mdl, cache, src, cells, site, layer, *a, **k):
            self.units.append((site, layer))
            return real_unit(mdl, cache, src, cells, site, layer, *a, **k)
        monkeypatch.setattr(sweep_mod, "_win_unit", unit)
        real_fw = zgdn.GatedDeltaNet.forward_window

        def fw(mixer, x, prev, initial_state=None, tail_only=False):
            self.windows.append((layer_of[id(mixer)], tail_only, prev.shape[1]))
            return real_fw(mixer, x, prev, initial_state, tail_only)
        monkeypatch.setattr(zgdn.GatedDeltaNet, "forward_window", fw)
        for b in model.blocks:
            if b.kind == "gdn":
                b.mixer.scan_fn = self.scan(b.mixer.scan_fn)
        monkeypatch.setattr(gdn_scan.FAMILY, "run_scan", self.scan(gdn_scan.FAMILY.run_scan))

    def scan(self, fn):
        def spied(q, *a, **k):
            cu = k.get("cu_seqlens")
            self.scans.append((q.shape[0], bool(k.get("use_qk_l2norm_in_kernel")), bool((q == 0).flatten(1).all(1).any()),
                               None if cu is None else len(cu) - 1))
            return fn(q, *a, **k)
        return functools.wraps(fn)(spied) if self.varlen else spied


def assert_few_shapes(spy, pairs, batch_size, direction):
    """The window path's scans (those without in-kernel l2norm) run in the variable-length form (one row), or (a
    scan that does not take it) at bucket sizes, some with pad rows, or (the prefix scans of
    `interp.patching.window.Prefix`) on a whole chunk's rows, as the unchanged run's forward; the prefix advances
    over <= STEP_MAX positions by the step recurrence."""
    N = pairs.clean.shape[0]
    chunk_rows = {min(batch_size, N - a) * k for a in range(0, N, batch_size) for k in (1, 1 + (direction == "both"))}
    window = [(B, pad, n) for B, l2, pad, n in spy.scans if not l2]
    if spy.varlen:
        assert all(B == 1 for B, _, n in window if n is not None)
        assert max(n or 0 for _, _, n in window) > 1                              # rows back to back
        assert spy.checked and all(spy.checked.values())                          # each configuration's first use
        assert len([B for B, _, n in window if n is None and B not in chunk_rows]) <= len(spy.checked)
    else:
        assert window and all(B == zgdn.row_bucket(B) or B in chunk_rows for B, _, n in window), window
        assert any(pad for _, pad, _ in window) and all(n is None for _, _, n in window)   # rows were padded
    assert {B for B, l2, _, _ in spy.scans if l2} <= chunk_rows                   # (the unchanged runs)
    assert spy.steps and max(spy.steps) <= STEP_MAX


def sweep3(model, pairs, monkeypatch, varlen=True, **kw):
    """The sweep with the kernel path's few shapes (and spied; ``varlen``: see `Spy`), without them (the code
    before), and on the general path."""
    hm = hooks.wrap(model)
    with monkeypatch.context() as mp:
        mp.setattr(zgdn, "FEW_SHAPES", True)
        mp.setattr(zgdn, "CHECKED", {})
        spy = Spy(model, mp, varlen)
        few = per_pair(hm, pairs, **kw)
        spy.checked = dict(zgdn.CHECKED)
    for b in model.blocks:                                   # (the spies off)
        if b.kind == "gdn":
            b.mixer.scan_fn = gdn_scan.scan
    plain = per_pair(hm, pairs, **kw)
    with monkeypatch.context() as mp:
        mp.setattr(sweep_mod, "_window_ok", lambda *_: False)
        general = per_pair(hm, pairs, **kw)
    return few, plain, general, spy


@pytest.mark.parametrize("direction,batch_size,varlen", [("denoise", 5, True), ("both", 7, True), ("both", 7, False)])
def test_resid_pre_sweep_at_few_shapes_equals_general_path(direction, batch_size, varlen, monkeypatch):
    model = random_zoo(32, 8, 2, "gdn75", seed=2)            # GDN at 0-2 and 4-6, attention at 3 and 7
    gdn = [i for i, k in enumerate(model.config.layers) if k == "gdn"]
    pairs = T.make_pairs("mqar", 6, seed=3, n_pairs=3)
    few, plain, general, spy = sweep3(model, pairs, monkeypatch, varlen, sites=["resid_pre"], direction=direction,
                                      batch_size=batch_size)
    assert sorted(set(spy.units)) == [("resid_pre", i) for i in range(8)]      # every layer on the window path
    starts = {(layer, tail, P) for layer, tail, P in spy.windows}
    conv = model.config.conv_size
    assert all(tail and P <= conv - 1 for _, tail, P in starts)                 # resumes, never re-scans a prefix
    assert {layer for layer, _, _ in starts} == set(gdn)
    assert_few_shapes(spy, pairs, batch_size, direction)
    moved = [np.nanmax(v["ld"]) - np.nanmin(v["ld"]) for v in few.values()]
    assert max(moved) > 1e-2                                                     # the patches act
    assert few.keys() == general.keys() == plain.keys()
    for key in few:
        assert_scaled(few[key], general[key], ("general", key))
        assert_scaled(few[key], plain[key], ("plain", key))


def test_mixer_out_and_rec_state_at_few_shapes_equal_general_path(monkeypatch):
    model = random_zoo(32, 8, 2, "gdn75", seed=4)
    pairs = T.make_pairs("mqar", 5, seed=5, n_pairs=3)
    few, plain, general, spy = sweep3(model, pairs, monkeypatch, sites=["mixer_out", "rec.state"],
                                      layers=[0, 2, 4], direction="denoise", batch_size=5)
    assert sorted(set(spy.units)) == [(s, i) for s in ("mixer_out", "rec.state") for i in (0, 2, 4)]
    assert_few_shapes(spy, pairs, 5, "denoise")
    for key in few:
        assert_scaled(few[key], general[key], ("general", key))
        assert_scaled(few[key], plain[key], ("plain", key))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_pairs_at_few_shapes_equal_general_path(side, monkeypatch):
    model = random_zoo(32, 8, 2, "gdn75", seed=6)
    p = T.pad_pairs([T.make_pairs("mqar", 3, seed=0, n_pairs=2), T.make_pairs("mqar", 4, seed=1, n_pairs=4)],
                    side=side)
    assert p.attention_mask is not None
    few, plain, general, spy = sweep3(model, p, monkeypatch, sites=["resid_pre"], direction="both", batch_size=5)
    assert sorted(set(spy.units)) == [("resid_pre", i) for i in range(8)]
    assert_few_shapes(spy, p, 5, "both")
    for key in few:
        assert_scaled(few[key], general[key], ("general", key))
        assert_scaled(few[key], plain[key], ("plain", key))
