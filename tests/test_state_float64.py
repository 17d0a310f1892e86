"""A float64 model's per-token recurrent states (rec.state) are computed, cached and handed to hook functions in
float64 (unless a state_dtype is asked for), and a patched state is continued from in float64; float32 models
keep float32 states."""
import copy

import pytest
import torch

import hooks
from test_adapters_hf import make as hf_make
from test_hooks_zoo import make as zoo_make

MODELS = {"zoo_gdn75": lambda: zoo_make("gdn75"), "zoo_mamba275": lambda: zoo_make("mamba275"),
          "qwen3_next": lambda: hf_make("qwen3_next")}
T, t0 = 12, 5


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request):
    torch.manual_seed(0)
    m = MODELS[request.param]().eval()
    return request.param, hooks.wrap(m), hooks.wrap(copy.deepcopy(m).double())


def _setup(hm):
    layer = next(L.index for L in hm.layers if L.rec is not None)
    x = torch.randint(2, hm.model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    return layer, x


def test_state_dtype_follows_the_model(pair):
    _, hm32, hm64 = pair
    layer, x = _setup(hm64)
    n = f"blocks.{layer}.rec.state"
    seen = []
    with torch.no_grad():
        for hm, want in ((hm32, torch.float32), (hm64, torch.float64)):
            seen.clear()
            _, c = hm.run_with_cache(x, names=[n], hooks=[(n, lambda S, h: seen.append(S.dtype))])
            assert c[n].dtype == want and seen == [want]
        _, c = hm64.run_with_cache(x, names=[n], state_dtype=torch.float32)   # asked for: as asked
        assert c[n].dtype == torch.float32
        _, c64 = hm64.run_with_cache(x, names=[n])
    torch.testing.assert_close(c[n], c64[n].float(), atol=0, rtol=0)


def _shift(D, scale, row=None):
    def fn(S, h):
        S = S.clone()
        if row is None:
            S[:, t0] += scale * D
        else:
            S[row, t0] += scale * D[row]
        return S
    return fn


def test_patched_float64_states_continue_in_float64(pair):
    """The readouts after a patched S_t are affine in S_t: r(S + D) + r(S + 3D) = 2 r(S + 2D) holds to float64
    rounding only if the continuation runs in float64 (float32: ~1e-7)."""
    _, _, hm = pair
    layer, x = _setup(hm)
    n, r = f"blocks.{layer}.rec.state", f"blocks.{layer}.rec.readout"
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[n])
        D = torch.randn(c[n][:, t0].shape, generator=torch.Generator().manual_seed(2), dtype=c[n].dtype)
        D = D * c[n][:, t0].abs().max()
        out = [hm.run_with_cache(x, names=[r], hooks=[(n, _shift(D, a))])[1][r] for a in (1, 2, 3)]
    err = (out[0] + out[2] - 2 * out[1]).abs().max() / out[1].abs().max()
    assert out[1].dtype == torch.float64 and err < 1e-12, err


def test_unpatched_row_keeps_float64_output(pair):
    """A state patched in one row only: the other row's output is the clean float64 run's (to float64
    rounding), where the layer computes in float64 (the zoo's scans; HF's GDN kernel runs in float32)."""
    kind, _, hm = pair
    if not kind.startswith("zoo"):
        pytest.skip("HF's torch_chunk_gated_delta_rule computes in float32 for float64 models")
    layer, x = _setup(hm)
    n = f"blocks.{layer}.rec.state"
    last = f"blocks.{len(hm.layers) - 1}.resid_post"
    with torch.no_grad():
        _, clean = hm.run_with_cache(x, names=[n, last])
        D = torch.ones_like(clean[n][:, t0])
        _, patched = hm.run_with_cache(x, names=[last], hooks=[(n, _shift(D, 0.5, row=0))])
    ref = clean[last]
    assert (patched[last][0, t0:] - ref[0, t0:]).abs().max() > 1e-4           # the patch acts on row 0
    err = (patched[last][1] - ref[1]).abs().max() / ref[1].abs().max()
    assert patched[last].dtype == torch.float64 and err < 1e-12, err
