"""run_with_cache(state_dtype=...): cached rec.state in bfloat16 / float16.

The states are computed in float32 and rounded once where they are written, so on CPU the
half-precision cache equals the float32 cache cast to that dtype bit for bit (tolerance: exact;
the CUDA Triton kernel rounds in-kernel, checked by bench/bench_capture.py). Hooks on rec.state
still see float32; the default stays float32.
"""
import json

import pytest
import torch

import hooks
from hooks import recurrence as R
from hooks.scan import mamba1
from interp import InterpError
from interp.capture import capture, load_capture
from interp.cli import main
from interp.zoo import HybridLM, ZooConfig, save_model

V = 40
T = 70  # crosses the 64-token chunk boundary of the state expansion
POSITIONS = [0, 5, 63, 64, 69]


def make(layout, seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=V, d_model=32, n_layers=4, layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8)
    return HybridLM(cfg).eval()


def toks(B=2, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def state_names(hm):
    return [f"blocks.{L.index}.rec.state" for L in hm.layers if L.rec is not None]


@pytest.mark.parametrize("layout", ["gdn75", "gla75", "mamba275", "gdn75-par"])
@pytest.mark.parametrize("positions", [None, POSITIONS])
def test_half_cache_is_fp32_cache_rounded(layout, positions):
    hm = hooks.wrap(make(layout))
    x = toks()
    st = state_names(hm)
    names = st + ["blocks.1.resid_post"]
    with torch.no_grad():
        lg32, c32 = hm.run_with_cache(x, names=names, positions=positions)
        for dt in (torch.bfloat16, torch.float16):
            lg, c = hm.run_with_cache(x, names=names, positions=positions, state_dtype=dt)
            assert torch.equal(lg, lg32)                                   # the forward is untouched
            assert torch.equal(c["blocks.1.resid_post"], c32["blocks.1.resid_post"])  # only states change
            for n in st:
                assert c32[n].dtype == torch.float32 and c[n].dtype == dt
                assert c[n].shape == c32[n].shape
                assert torch.equal(c[n], c32[n].to(dt)), n
                # and it really is rounded: half-precision values differ from the float32 ones
                assert not torch.equal(c[n].float(), c32[n])


def test_default_is_float32_and_unchanged():
    hm = hooks.wrap(make("gdn75"))
    x = toks()
    st = state_names(hm)
    with torch.no_grad():
        _, plain = hm.run_with_cache(x, names=st)
        _, named = hm.run_with_cache(x, names=st, state_dtype="float32")
        _, dtype = hm.run_with_cache(x, names=st, state_dtype=torch.float32)
        _, alias = hm.run_with_cache(x, names=st, state_dtype="bf16")
    for n in st:
        assert plain[n].dtype == torch.float32
        assert torch.equal(plain[n], named[n]) and torch.equal(plain[n], dtype[n])
        assert alias[n].dtype == torch.bfloat16


def test_hooks_on_state_see_float32_and_patches_are_cached_rounded():
    hm = hooks.wrap(make("gdn75"))
    x = toks()
    n = state_names(hm)[0]
    seen = []

    def patch(S, name):
        seen.append(S.dtype)
        S = S.clone()
        S[:, 10] *= 0.5
        return S
    with torch.no_grad():
        lg32, c32 = hm.run_with_cache(x, names=[n], hooks=[(n, patch)], positions=POSITIONS)
        lg16, c16 = hm.run_with_cache(x, names=[n], hooks=[(n, patch)], positions=POSITIONS,
                                      state_dtype=torch.bfloat16)
    assert seen == [torch.float32, torch.float32]
    assert torch.equal(lg16, lg32)  # the patch acted on float32 states both times
    assert c16[n].dtype == torch.bfloat16 and torch.equal(c16[n], c32[n].to(torch.bfloat16))


def test_mamba1_states_out_dtype():
    g = torch.Generator().manual_seed(0)
    b, Tm, D, N = 2, 40, 6, 4
    x, dt = torch.randn(b, Tm, D, generator=g), torch.rand(b, Tm, D, generator=g)
    A = -torch.rand(D, N, generator=g) - 0.1
    B_, C_ = torch.randn(b, Tm, N, generator=g), torch.randn(b, Tm, N, generator=g)
    c = R.canonical("mamba1", dict(x=x, dt=dt, A=A, B=B_, C=C_))
    for pos in (None, torch.tensor([0, 17, 39])):
        ref = R.states("mamba1", c, positions=pos)
        half = R.states("mamba1", c, positions=pos, out_dtype=torch.bfloat16)
        assert ref.dtype == torch.float32 and torch.equal(half, ref.to(torch.bfloat16))
    assert torch.equal(mamba1.states(x, dt, A, B_, C_, out_dtype=torch.float16),
                       mamba1.states(x, dt, A, B_, C_).half())


@pytest.mark.parametrize("bad", [torch.int32, torch.float64, "int8", "float8", 16])
def test_bad_state_dtype(bad):
    hm = hooks.wrap(make("gdn75"))
    with pytest.raises(ValueError, match=r"state_dtype .* not supported; valid: .*float32, bfloat16, float16"):
        hm.run_with_cache(toks(), names=state_names(hm), state_dtype=bad)
    with pytest.raises(ValueError, match="valid"), hm.hooks(state_dtype=bad):
        pass


def test_capture_api_bad_dtype_and_resume_mismatch(tmp_path):
    m = make("gdn75")
    x = toks(B=3)
    with pytest.raises(InterpError, match="bfloat16"):
        capture(m, x, ["blocks.0.rec.state"], tmp_path / "bad", state_dtype=torch.int64, progress=False)
    out = capture(m, x, ["blocks.0.rec.state"], tmp_path / "cap", state_dtype="float16", progress=False,
                  batch_size=2)
    man = json.loads((out / "manifest.json").read_text())
    assert man["state_dtype"] == "float16"
    assert all(s["dtypes"] == {"blocks.0.rec.state": "float16"} for s in man["shards"])
    with pytest.raises(InterpError, match="holds states in float16, not float32"):
        capture(m, x, ["blocks.0.rec.state"], tmp_path / "cap", progress=False)


def test_cli_state_dtype_writes_bf16(tmp_path, capsys):
    from interp.tasks import VOCAB
    torch.manual_seed(0)
    m = HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2,
                           head_dim=16)).eval()
    save_model(m, tmp_path / "model")
    args = ["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--n", "4",
            "--names", "blocks.0.rec.state,blocks.1.resid_post"]
    assert main(args + ["--out", str(tmp_path / "f32")]) == 0
    assert main(args + ["--out", str(tmp_path / "b16"), "--state-dtype", "bfloat16"]) == 0
    f32, b16 = load_capture(tmp_path / "f32"), load_capture(tmp_path / "b16")
    assert f32["blocks.0.rec.state"].dtype == torch.float32
    assert b16["blocks.0.rec.state"].dtype == torch.bfloat16
    assert b16["blocks.1.resid_post"].dtype == torch.float32
    assert torch.equal(b16["blocks.0.rec.state"], f32["blocks.0.rec.state"].to(torch.bfloat16))
    man = json.loads((tmp_path / "b16" / "manifest.json").read_text())
    assert man["state_dtype"] == "bfloat16"
    assert man["shards"][0]["dtypes"]["blocks.0.rec.state"] == "bfloat16"
    assert json.loads((tmp_path / "f32" / "manifest.json").read_text())["state_dtype"] == "float32"
    # resuming with another dtype is refused; a dtype outside the choices is an argparse error
    assert main(args + ["--out", str(tmp_path / "b16"), "--state-dtype", "float16"]) == 2
    assert "holds states in bfloat16" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(tmp_path / "x"), "--state-dtype", "int8"])
    assert e.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err
