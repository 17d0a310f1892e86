"""The ``blocks.{i}.rec.pattern`` hook point (hooks.effective through hooks.session.ScanHook) on every adapter
that runs on CPU, and interp.patterns (who reads the fact, contributions, pattern figures, `interp patterns`).
(a) capture keeps the model's logits bit for bit and sum_s A[t, s] v_s (+ D v_t) equals the layer's own
rec.readout, for all rows and for positions= rows (which equal rows of the full pattern); (b) a hook function
on it observes only; (c) the memory guard names the size and positions=; (d) interp.patterns. CPU, float32."""
import argparse

import pytest
import torch

import hooks
from hooks import effective as E
from hooks.names import HookError, HookNameError
from interp import InterpError
from interp import patterns as P
from interp import tasks

transformers = pytest.importorskip("transformers")
from test_adapters_jamba import make as mamba1_make  # noqa: E402
from test_adapters_lfm2 import make as lfm2_make  # noqa: E402
from test_adapters_mamba import make as mamba2_make  # noqa: E402
from test_effective import HF_COMMON, HF_GDN, HF_V, hf, rel, zoo  # noqa: E402
from test_hooks_zoo import make as zoo_make  # noqa: E402

B, T = 2, 150                       # three chunks of 64
POS = [149, 0, 70, 63, 64]


def qwen3_5_text():
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model("qwen3_5_text", **HF_COMMON, **HF_GDN, head_dim=8)
    return transformers.AutoModelForCausalLM.from_config(cfg).float().eval()


MODELS = {
    **{f"zoo_{lay}": (lambda lay=lay: zoo_make(lay)) for lay in ("gdn75", "gla75", "mamba275", "gdn75-par",
                                                                  "gla75-par", "mamba275-par")},
    "zoo_neg_eig": lambda: zoo(["gdn", "attn"], neg_eig=True, seed=1),
    "qwen3_next": lambda: hf("qwen3_next"),
    "qwen3_5_text": qwen3_5_text,
    "olmo_hybrid": lambda: hf("olmo_hybrid"),
    **{k: (lambda k=k: mamba2_make(k)) for k in ("mamba2", "bamba", "falcon_h1", "zamba2", "nemotron_h")},
    **{k: (lambda k=k: mamba1_make(k)) for k in ("mamba", "falcon_mamba", "jamba")},
    "lfm2": lambda: lfm2_make("lfm2"),
}
SCAN_MODELS = [k for k in MODELS if k != "lfm2"]   # lfm2's conv pattern is checked in test_adapters_lfm2.py
_built = {}


def model(kind):
    if kind not in _built:
        _built[kind] = MODELS[kind]()
    return _built[kind]


def vocab(m):
    return m.config.vocab_size


def tokens(m, n=T):
    return torch.randint(2, min(vocab(m), HF_V), (B, n), generator=torch.Generator().manual_seed(7))


def plain_logits(m, x):
    with torch.no_grad():
        return m(x) if not hasattr(m, "generation_config") else m(input_ids=x, use_cache=False).logits


def rec_layers(hm):
    return [L for L in hm.layers if L.rec is not None]


def rebuilt(L, A, v):
    """sum_s A[t, s] v_s: [B, P, H, V] (Mamba1 [B, P, D]) for pattern rows A [B, H, P, T] and the layer's
    whole v [B, T, ...]."""
    v = v.float()
    if L.rec_family == "mamba1":
        return torch.einsum("bdps,bsd->bpd", A, v)
    return torch.einsum("bhps,bshv->bphv", A, v)


def skip(L, v):
    """The Mamba skip D v_t the layers' readouts include (the adapters pass the mixer's D to the scan)."""
    if L.rec_family not in ("mamba2", "mamba1") or getattr(L.rec, "D", None) is None:
        return torch.zeros_like(v.float())
    D = L.rec.D.detach().float()
    return v.float() * (D.view(1, 1, -1, 1) if L.rec_family == "mamba2" else D)


# --- (a) capture: logits unchanged, the pattern rebuilds the readout ------------------------------

@pytest.mark.parametrize("kind", SCAN_MODELS)
def test_pattern_rebuilds_the_layers_readout(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    x = tokens(m)
    rec = rec_layers(hm)
    assert rec and all(f"blocks.{L.index}.rec.pattern" in hm.hook_names for L in rec)
    assert all(f"blocks.{L.index}.rec.pattern" not in hm.hook_names for L in hm.layers if L.rec is None)
    names = [f"blocks.{L.index}.rec.{s}" for L in rec for s in ("pattern", "v", "readout")]
    ref = plain_logits(m, x)
    with torch.no_grad():
        lg, c = hm.run_with_cache(x, names=names)
        lgp, cp = hm.run_with_cache(x, names=[n for n in names if not n.endswith(".v")], positions=POS)
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)            # capture only: the model's own output
    torch.testing.assert_close(lgp, ref, atol=0, rtol=0)
    for L in rec:
        p = f"blocks.{L.index}.rec"
        A, v, o = c[f"{p}.pattern"], c[f"{p}.v"], c[f"{p}.readout"]
        H = v.shape[2]
        assert A.shape == (B, H, T, T) and A.dtype == torch.float32
        assert torch.count_nonzero(A.triu(1)) == 0
        assert rel(rebuilt(L, A, v) + skip(L, v), o) < 1e-5, (kind, L.index)
        Ap = cp[f"{p}.pattern"]
        assert Ap.shape == (B, H, len(POS), T)
        torch.testing.assert_close(Ap, A[:, :, POS], atol=1e-6, rtol=1e-5)
        assert rel(rebuilt(L, Ap, v) + skip(L, v)[:, POS], cp[f"{p}.readout"]) < 1e-5, (kind, L.index)


def test_attention_only_layers_have_no_rec_pattern():
    hm = hooks.wrap(model("zoo_gdn75"))
    attn = [L.index for L in hm.layers if L.rec is None]
    with pytest.raises(HookNameError, match="has no recurrent mixer"):
        hm.run_with_cache(tokens(hm.model, 8), names=[f"blocks.{attn[0]}.rec.pattern"])


# --- (b) hook functions observe only ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["zoo_gdn75-par", "qwen3_next", "mamba2", "jamba"])
def test_hook_function_on_pattern_observes_only(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    x = tokens(m, 40)
    ref = plain_logits(m, x)
    seen = {}

    def look(A, name):
        seen[name] = A.shape
    rec = [f"blocks.{L.index}.rec.pattern" for L in rec_layers(hm)]
    with torch.no_grad():
        out = hm.run_with_hooks(x, hooks=[(n, look) for n in rec] + [(n, lambda A, name: A) for n in rec])
    torch.testing.assert_close(out, ref, atol=0, rtol=0)           # the layer's own output (capture_only kept)
    assert set(seen) == set(rec) and all(s[0] == B and s[-2:] == (40, 40) for s in seen.values())
    with pytest.raises(NotImplementedError, match="cached and read, not changed"), torch.no_grad():
        hm.run_with_hooks(x, hooks=[(rec[0], lambda A, name: A * 2)])
    torch.testing.assert_close(plain_logits(m, x), ref, atol=0, rtol=0)  # nothing left behind


# --- (c) the memory guard ---------------------------------------------------------------------------

def test_memory_guard_names_size_and_positions(monkeypatch):
    m = model("qwen3_next")
    hm = hooks.wrap(m)
    x = tokens(m)
    L = rec_layers(hm)[0]
    name = f"blocks.{L.index}.rec.pattern"
    full = B * 4 * T * T * 4                                       # 4 value heads, float32
    monkeypatch.setattr(E, "DEFAULT_BUDGET", full - 1)
    with pytest.raises(E.PatternMemoryError, match=rf"'{name}'.*\[{B}, 4, {T}, {T}\].*GiB.*positions="), \
            torch.no_grad():
        hm.run_with_cache(x, names=[name])
    assert issubclass(E.PatternMemoryError, HookError) and issubclass(E.PatternMemoryError, ValueError)
    with torch.no_grad():
        lg, c = hm.run_with_cache(x, names=[name], positions=[T - 1])
    assert c[name].shape == (B, 4, 1, T)
    torch.testing.assert_close(lg, plain_logits(m, x), atol=0, rtol=0)


# --- (d) interp.patterns ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["zoo_mamba275", "qwen3_next", "mamba", "lfm2"])
def test_contributions_sum_to_the_readout(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    x = tokens(m, 90)
    L = rec_layers(hm)[0]
    r = P.contributions(m, x, L.index, [89, 3, 64])
    fam = L.rec_family
    assert r.contributions.shape[:3] == (B, 3, 90) and r.contributions.dim() == (4 if fam in P.PER_CHANNEL else 5)
    torch.testing.assert_close(r.contributions.sum(2) + r.rest, r.readout, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"blocks.{L.index}.rec.v", f"blocks.{L.index}.rec.readout"])
    v = c[f"blocks.{L.index}.rec.v"]
    torch.testing.assert_close(r.readout, c[f"blocks.{L.index}.rec.readout"][:, [89, 3, 64]].float())
    if fam == "shortconv":   # the rest is C_t * bias, the conv's bias term (zero without one)
        bias = getattr(L.rec.conv, "bias", None)
        with torch.no_grad():
            _, cq = hm.run_with_cache(x, names=[f"blocks.{L.index}.rec.q"])
        want = torch.zeros_like(r.rest) if bias is None else cq[f"blocks.{L.index}.rec.q"][:, [89, 3, 64]] * bias
        torch.testing.assert_close(r.rest, want.float(), atol=1e-6, rtol=1e-5)
    else:
        assert rel(r.rest, skip(L, v)[:, [89, 3, 64]]) < 1e-5 if fam != "gdn" else r.rest.abs().max() < 1e-5
    with pytest.raises(InterpError, match="no recurrent mixer"):
        P.contributions(m, x, next((i.index for i in hm.layers if i.rec is None), hm.n_layers), [0])


def test_fact_sources_point_at_the_answer():
    b = tasks.generate("mqar", 32, seed=3)
    rows, src = P.fact_sources(b)
    assert rows == b.answer_pos[0].tolist()
    assert torch.equal(b.tokens.gather(1, src), b.answers)          # the bound value is the answer
    key = b.tokens.gather(1, src - 1)
    assert torch.equal(key, b.tokens[:, rows])                      # ... written right after the queried key
    s = tasks.generate("state_recall", 32, seed=3, complexity="assign", n_steps=12)
    rows, src = P.fact_sources(s)
    assert rows == [s.tokens.shape[1] - 2]
    assert torch.equal(s.tokens.gather(1, src), s.answers)          # the last assignment's constant
    assert torch.equal(s.tokens.gather(1, src - 2), s.tokens[:, rows])  # ... of the queried variable
    starts = torch.arange(1, s.tokens.shape[1] - 3, 4)              # every statement is 'xi = c ;'
    later = starts[None] > src - 2
    assert not ((s.tokens[:, starts] == s.tokens[:, rows]) & later).any()  # no later one writes xq
    with pytest.raises(InterpError, match="no ground-truth source"):
        P.fact_sources(tasks.generate("copy", 4, seed=0))


def test_shares_of_a_known_pattern():
    A = torch.zeros(1, 2, 1, 5)
    A[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])            # softmax-like row
    A[0, 1, 0] = torch.tensor([-1.0, 0.0, 3.0, 0.0, 0.0])           # signed: |A| mass
    v = torch.ones(1, 5, 1, 3)
    v[0, 2] *= 3                                                   # source 2 writes a 3x longer vector
    w, c = P._shares(A, v, torch.tensor([[2]]))                    # one kv head serves both heads (GQA)
    torch.testing.assert_close(w, torch.tensor([[[0.3, 0.75]]]))
    torch.testing.assert_close(c, torch.tensor([[[0.9 / 1.6, 9 / 10]]]))


@pytest.fixture(scope="module")
def cli():
    from interp.cli import patterns as cmd
    p = argparse.ArgumentParser(prog="interp")
    cmd.add_parser(p.add_subparsers(dest="cmd"))

    def run(*argv):
        a = p.parse_args(["patterns", *argv])
        return a.func(a)
    return run


def test_cli_draws_patterns_and_the_map(cli, tmp_path, capsys):
    cli("--model", "gdn75", "--task", "mqar", "--layer", "3", "--example", "1", "--out", str(tmp_path))
    cli("--model", "gdn75", "--task", "state_recall", "--layer", "2", "--out", str(tmp_path))
    assert (tmp_path / "gdn75_mqar_L3_ex1.png").stat().st_size > 10_000
    assert (tmp_path / "gdn75_state_recall_L2_ex0.png").stat().st_size > 10_000
    cli("--who-reads", "--model", "gdn75", "--task", "mqar", "--n", "16", "--n-boot", "200", "--out",
        str(tmp_path / "map"))
    out = capsys.readouterr().out
    assert "kept" in out and (tmp_path / "map" / "who_reads.png").is_file()
    import pandas as pd
    t = pd.read_csv(tmp_path / "map" / "results.csv")
    assert len(t) == 12 * 4 and set(t.kind) == {"attn", "gdn"}
    assert ((t.lo <= t.share + 1e-9) & (t.share <= t.hi + 1e-9) & (t.share >= 0) & (t.share <= 1)).all()
    assert "## mqar: top 3 heads per model" in (tmp_path / "map" / "report.md").read_text()
    import json
    spec = json.loads((tmp_path / "map" / "spec.json").read_text())["spec"]
    assert set(spec["models"]) == {"gdn75"} and spec["knobs"] == {"mqar": {}} and spec["n"] == 16
    with pytest.raises(InterpError, match="give --layer"):
        cli("--model", "gdn75", "--out", str(tmp_path))
    # each output records what made it: other settings are refused until --overwrite (interp.oneshot)
    png = tmp_path / "gdn75_mqar_L3_ex1.png"
    before = png.read_bytes()
    assert json.loads((tmp_path / "gdn75_mqar_L3_ex1.png.json").read_text())["spec"]["seed"] == 0
    with pytest.raises(InterpError, match=r"gdn75_mqar_L3_ex1.png was made with other settings .*seed: 0 -> 1"):
        cli("--model", "gdn75", "--task", "mqar", "--layer", "3", "--example", "1", "--seed", "1", "--out",
            str(tmp_path))
    assert png.read_bytes() == before
    cli("--model", "gdn75", "--task", "mqar", "--layer", "3", "--example", "1", "--seed", "1", "--overwrite", "--out",
        str(tmp_path))
    assert png.read_bytes() != before
    with pytest.raises(InterpError, match=r"who_reads.png was made with other settings \(spec.json: n: 16 -> 8\)"):
        cli("--who-reads", "--model", "gdn75", "--task", "mqar", "--n", "8", "--n-boot", "200", "--out",
            str(tmp_path / "map"))
    assert len(pd.read_csv(tmp_path / "map" / "results.csv")) == 12 * 4
    for drawing in (["--layer", "3"], ["--example", "0"], ["--kind", "rec"]):
        with pytest.raises(InterpError, match=f"{drawing[0]} chooses one example's drawing"):
            cli("--who-reads", *drawing, "--out", str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
    with pytest.raises(InterpError, match="layer 3 has attn"):
        P.example_pattern(model("zoo_gdn75"), tasks.generate("mqar", 1), 3, kind="rec")


def test_cli_turns_the_memory_guard_into_a_user_error(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "DEFAULT_BUDGET", 100)
    with pytest.raises(InterpError, match="GiB.*positions="):
        cli("--model", "gdn75", "--task", "mqar", "--layer", "2", "--out", str(tmp_path))


@pytest.mark.parametrize("name,fam", [("mamba", "mamba1"), ("lfm2", "shortconv")])
def test_per_channel_reduced_view_figure(tmp_path, name, fam):
    m = model(name)
    b = tasks.generate("mqar", 1, seed=0)
    b.tokens = b.tokens.clamp_max(vocab(m) - 1)
    A, kind, words = P.example_pattern(m, b, 0)
    assert kind == fam and A.shape == (1, b.tokens.shape[1], b.tokens.shape[1]) and (A >= 0).all()
    hm = hooks.wrap(m)
    with torch.no_grad():
        _, c = hm.run_with_cache(b.tokens, names=["blocks.0.rec.pattern", "blocks.0.rec.v"])
    full = (c["blocks.0.rec.pattern"][0] * c["blocks.0.rec.v"][0].T[:, None, :]).norm(dim=0)
    torch.testing.assert_close(torch.as_tensor(A[0]), full, atol=1e-6, rtol=1e-5)
    assert P.plot_pattern(A, kind, words, tmp_path / "m1.png").stat().st_size > 5_000
