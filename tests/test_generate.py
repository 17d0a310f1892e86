"""Generation under hooks (hooks.generate): the recomputation path against the model's own cached decode
(HF generate) for an attention, a Gated DeltaNet and a Mamba2 model; step hooks against a prefill with the
same patch fixed at its position; prompt patches; eos; sampling; bad input; nothing left behind."""
import pytest
import torch
import transformers

import hooks
import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hooks.names import HookError
from interp.zoo import HybridLM, ZooConfig
from test_adapters_hf import make as make_hf
from test_adapters_mamba import config as mamba_config

HF_KINDS = ["llama", "qwen3_next", "mamba2"]


@H.cached
def hf_model(kind):
    if kind == "mamba2":
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(mamba_config("mamba2")).float().eval()
    return make_hf(kind)


def zoo(layout="gdn75", vocab=40):
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=vocab, d_model=32, n_layers=4, layout=layout, n_heads=2, head_dim=16,
                              mamba_head_dim=16, mamba_state=8)).eval()


def vocab(m):
    return m.get_input_embeddings().num_embeddings if hasattr(m, "get_input_embeddings") else m.config.vocab_size


@pytest.mark.parametrize("kind", HF_KINDS)
def test_recompute_equals_model_cache(kind):
    """Greedy and sampled tokens of the recomputation path equal those chosen on the model's own cached
    decode path (HF generate); greedy also equals HF's plain greedy generate; the logits agree."""
    m = hf_model(kind)
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=3, n=6)
    snap = H.snapshot(m)
    for kw in (dict(), dict(sample=True, temperature=1.7, top_p=0.9, seed=5)):
        a = hm.generate(x, 8, **kw)
        b = hm.generate(x, 8, use_cache=False, **kw)
        assert (a.path, b.path) == ("cache", "recompute")
        assert torch.equal(a.tokens, b.tokens), kw
        torch.testing.assert_close(a.scores, b.scores, atol=2e-5, rtol=1e-4)
        assert a.tokens.shape == (3, 14) and torch.equal(a.tokens[:, :6], x)
    with torch.no_grad():
        ref = m.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                         eos_token_id=None, pad_token_id=0, min_new_tokens=0)
    assert torch.equal(ref, hm.generate(x, 8).tokens)
    H.assert_clean(m, snap)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_sampling_reproducible_and_seeded(kind):
    m = hf_model(kind)
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=4, n=5)
    a = hm.generate(x, 10, sample=True, temperature=3.0, seed=1)
    assert torch.equal(a.tokens, hm.generate(x, 10, sample=True, temperature=3.0, seed=1).tokens)
    assert not torch.equal(a.tokens, hm.generate(x, 10, sample=True, temperature=3.0, seed=2).tokens)
    assert not torch.equal(a.tokens, hm.generate(x, 10).tokens)


def test_top_p_keeps_the_nucleus():
    from hooks.generate import choose
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    got = choose(logits, True, 1.0, 0.75, torch.Generator().manual_seed(0))
    assert set(got.tolist()) == {0, 1}                  # 0.5 + 0.3 reaches 0.75: tokens 2 and 3 are out
    frac = (got == 0).double().mean().item()
    assert abs(frac - 0.5 / 0.8) < 0.03                 # renormalised within the nucleus
    assert set(choose(logits, True, 1.0, 1.0, torch.Generator().manual_seed(0)).tolist()) == {0, 1, 2, 3}


def _fixed(name_pos_val):
    """A hook that puts fixed values at fixed positions (the prefill version of a kept step edit)."""
    def fn(x, _):
        x = x.clone()
        for p, v in name_pos_val:
            x[:, p] = v
        return x
    return fn


@pytest.mark.parametrize("site", ["rec.state", "resid_post"])
def test_step_hook_equals_prefill_with_the_patch(site):
    """A step hook that edits the newest token's state (or residual) at step 3 changes the continuation;
    the generated tokens are the greedy continuation of a prefill that carries the same edit at the same
    position, and the capture equals that prefill's activations."""
    m, name = zoo(), f"blocks.1.{site}"
    hm = hooks.wrap(m)
    x, T0, n, s = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(3)), 7, 9, 3
    edited = {}

    def step_fn(xn, hp, step):
        if step == s:
            new = xn * -3.0 + 0.5
            edited["v"] = new[:, 0].clone()
            return new
    g = hm.generate(x, n, step_hooks=[(name, step_fn)], cache_names=[name, "blocks.3.resid_post"])
    plain = hm.generate(x, n)
    assert torch.equal(g.tokens[:, :T0 + s], plain.tokens[:, :T0 + s])   # the edit acts from its step on:
    assert torch.equal(g.scores[:, :s], plain.scores[:, :s])
    assert (g.scores[:, s] - plain.scores[:, s]).abs().max() > 1e-3
    p = T0 + s - 1                                       # the position step s adds
    fixed = _fixed([(p, edited["v"])])
    logits, ref = hm.run_with_cache(g.tokens, [name, "blocks.3.resid_post"], hooks=[(name, fixed)])
    assert torch.equal(logits[:, T0 - 1:-1].argmax(-1), g.new_tokens)
    for k in (name, "blocks.3.resid_post"):
        torch.testing.assert_close(g.cache[k], ref[k], atol=1e-5, rtol=1e-5)
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_prompt_patch_equals_prefill_patch():
    """A hook function on a prompt position acts at every step as on a prefill of the final tokens."""
    m = hf_model("qwen3_next")
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=2, n=6)
    name = "blocks.0.rec.state"

    def zero_at_2(S, _):
        S = S.clone()
        S[:, 2] = 0
        return S
    g = hm.generate(x, 6, hooks=[(name, zero_at_2)], cache_names=[name])
    assert g.path == "cache"              # decoded on the model's cache (tests/test_generate_cached.py)
    logits, ref = hm.run_with_cache(g.tokens, [name], hooks=[(name, zero_at_2)])
    assert torch.equal(logits[:, 5:-1].argmax(-1), g.new_tokens)
    torch.testing.assert_close(g.cache[name], ref[name])


@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_pads_finished_rows_and_stops(use_cache):
    m = hf_model("llama")
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=3, n=5)
    free = hm.generate(x, 12, use_cache=use_cache)
    eos = int(free.new_tokens[0, 2])                     # row 0 produces it at step 2
    g = hm.generate(x, 12, eos_token_id=eos, use_cache=use_cache)
    for r in range(3):
        row, ref = g.new_tokens[r].tolist(), free.new_tokens[r].tolist()
        k = ref.index(eos) if eos in ref else len(ref)
        assert row[:k + 1] == ref[:k + 1][:len(row)]
        assert all(t == eos for t in row[k + 1:])
    assert g.tokens.shape[1] <= free.tokens.shape[1]
    if all(eos in r for r in free.new_tokens.tolist()):
        assert g.tokens.shape[1] < free.tokens.shape[1]


def test_zoo_text_and_capture_positions():
    from interp.zoo.hf import attach_tokenizer
    m = attach_tokenizer(zoo("transformer"))
    hm = hooks.wrap(m)
    x = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(0))
    g = hm.generate(x, 4, cache_names=["blocks.0.attn.pattern"], positions=[-1])
    assert g.path == "recompute" and g.new_tokens.shape == (1, 4)
    assert g.cache["blocks.0.attn.pattern"].shape == (1, 2, 1, 9)
    assert isinstance(g.text[0], str) and g.text[0]


@pytest.mark.parametrize("use_cache", [True, False])
def test_force_takes_the_template(use_cache):
    """Forced steps take the given token (the model's scores still recorded), the others are chosen
    given the forced prefix: equal to greedy decoding of the prompt extended by the forced tokens."""
    m = hf_model("qwen3_next")
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=2, n=5)
    force = torch.full((2, 6), -1, dtype=torch.long)
    force[:, 2], force[0, 3] = 7, 9
    g = hm.generate(x, 6, force=force, use_cache=use_cache)
    assert (g.new_tokens[:, 2] == 7).all() and g.new_tokens[0, 3] == 9
    logits = H.logits(m, g.tokens)
    free = force[:, :] < 0
    assert torch.equal(logits[:, 4:-1].argmax(-1)[free], g.new_tokens[free])
    torch.testing.assert_close(g.scores, logits[:, 4:-1].float(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kw,match", [
    (dict(force=torch.zeros(1, 2, dtype=torch.long)), "force"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=0.0), "temperature"),
    (dict(top_p=1.5), "top_p"), (dict(eos_token_id=10 ** 6), "eos_token_id"),
    (dict(step_hooks=[("blocks.0.attn.pattern", lambda x, h, s: None)]), "pattern"),
    (dict(step_hooks=[("blocks.0.nope", lambda x, h, s: None)]), "nope"),
])
def test_bad_input(kw, match):
    m = zoo()
    hm = hooks.wrap(m)
    kw = {"max_new_tokens": 3, **kw}
    with pytest.raises(HookError, match=match):
        hm.generate(torch.zeros(1, 4, dtype=torch.long), **kw)


def test_step_hook_bad_return_leaves_nothing():
    m = zoo()
    hm = hooks.wrap(m)
    with pytest.raises(HookError, match="step hook"):
        hm.generate(torch.zeros(1, 4, dtype=torch.long), 3,
                    step_hooks=[("blocks.0.resid_post", lambda x, h, s: x[:, :, :2])])
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_chains_greedy_equal_forced_generate_and_samples_vote():
    """Greedy chains of interp.closedloop equal hooks.generate with the task's fixed tokens forced; sampled
    chains keep the fixed tokens, are reproducible per seed, and vote (majority / pass@N rows)."""
    from interp import tasks as T
    from interp.closedloop import IS, sample_chains
    from interp.voting import chain_vote_rows
    m = zoo(vocab=len(T.VOCAB))
    b = T.generate("state_recall", 4, seed=0, n_steps=3, n_vars=2, cot=True)
    c = sample_chains(m, b, 1)
    pos = (b.tokens[0] == IS).nonzero().flatten().tolist()
    ap, p0 = int(b.answer_pos[0, 0]), pos[0]
    force = b.tokens[:, p0 + 1:ap + 2].clone()
    force[:, [p - p0 for p in pos] + [ap - p0]] = -1                 # derived values and the answer are chosen
    g = hooks.wrap(m).generate(b.tokens[:, :p0 + 1], ap + 1 - p0, force=force)
    assert torch.equal(g.tokens[:, :ap + 1], c["tokens"][:, 0]) and torch.equal(g.tokens[:, ap + 1], c["answers"][:, 0])
    s1 = sample_chains(m, b, 3, sample=True, temperature=2.0, seed=4)
    assert torch.equal(s1["answers"], sample_chains(m, b, 3, sample=True, temperature=2.0, seed=4)["answers"])
    fixed = torch.ones(ap + 1, dtype=torch.bool)
    fixed[[p + 1 for p in pos]] = False
    assert (s1["tokens"][:, :, fixed] == b.tokens[:, None, :ap + 1][:, :, fixed]).all()
    assert (s1["tokens"][:, :, [p + 1 for p in pos]] != c["tokens"][:, :, [p + 1 for p in pos]]).any()
    rows = chain_vote_rows(m, b, ns=(1, 2), temperature=1.0, seed=1)
    assert [r["N"] for r in rows] == [1, 2] and all(0 <= r["pass_at_n"] <= 1 for r in rows)
    assert rows[0]["pass_at_n"] == rows[0]["majority_acc"]


def test_cli_generate_chains_and_prompts(tmp_path, capsys):
    from interp.cli import main
    out = tmp_path / "g"
    assert main(["generate", "--n", "4", "--samples", "2", "--knob", "n_steps=2", "--knob", "n_vars=1",
                 "--out", str(out)]) == 0
    import json
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "state_recall" and 0 <= s["closed_loop_acc"] <= 1 and [v["N"] for v in s["votes"]] == [1, 2]
    assert (out / "votes.csv").exists() and (out / "spec.json").exists()
    # the same folder with other options is refused, naming the field; nothing is replaced
    assert main(["generate", "--n", "5", "--samples", "2", "--knob", "n_steps=2", "--knob", "n_vars=1",
                 "--out", str(out)]) == 2
    assert "n:" in capsys.readouterr().err
    out2 = tmp_path / "p"
    assert main(["generate", "--prompt", "<bos> x0 = 3 ; ? x0", "--max-new", "3", "--out", str(out2)]) == 0
    import pandas as pd
    g = pd.read_csv(out2 / "generations.csv")
    assert len(g) == 1 and len(g.continuation[0].split()) == 3


@pytest.mark.parametrize("args,match", [
    (["--task", "mqar"], "--task mqar has no chain-of-thought form"), (["--temperature", "0"], "temperature"),
    (["--top-p", "1.5"], "top-p"),
    (["--prompt", "<bos> x0", "--prompt", "<bos> x0 = 3"], "different numbers of tokens"),
    (["--prompt", " "], "--prompt ' ' is empty"), (["--max-new", "3"], "--max-new does not apply to --task"),
    (["--prompt", "<bos> x0", "--knob", "n_steps=2"], "--knob does not apply to --prompt"),
    (["--prompt", "<bos> x0", "--n", "3"], "--n does not apply to --prompt"),
])
def test_cli_generate_bad_input(tmp_path, capsys, args, match):
    from interp.cli import main
    try:
        rc = main(["generate", "--out", str(tmp_path / "o")] + args)
    except SystemExit as e:         # argparse's own usage errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_cli_generate_records_the_weights_not_only_the_name(tmp_path, capsys):
    """Another model saved under the same path is refused: the spec holds the weights' digest."""
    import shutil

    from interp.cli import main
    from interp.demo import default_model_path as default_path
    m = tmp_path / "m"
    shutil.copytree(default_path("gdn75"), m)
    argv = ["generate", "--model", str(m), "--prompt", "<bos> x0 = 3 ; ? x0", "--max-new", "2", "--out",
            str(tmp_path / "g")]
    assert main(argv) == 0
    shutil.rmtree(m)
    shutil.copytree(default_path("gdn100"), m)
    capsys.readouterr()
    assert main(argv) == 2
    assert "model.digest:" in capsys.readouterr().err


@pytest.mark.parametrize("kind", HF_KINDS)
def test_left_padded_prompts_generate_as_alone(kind):
    """A left-padded batch continues each prompt as it continues alone, on both decode paths."""
    m = hf_model(kind)
    hm = hooks.wrap(m)
    a, b = H.toks(vocab(m), B=1, n=4, seed=1), H.toks(vocab(m), B=1, n=7, seed=2)
    toks = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a], 1), b])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    for use_cache in (True, False):
        g = hm.generate(toks, 5, attention_mask=mask, use_cache=use_cache)
        assert torch.equal(g.new_tokens[0], hm.generate(a, 5).new_tokens[0]), use_cache
        assert torch.equal(g.new_tokens[1], hm.generate(b, 5).new_tokens[0]), use_cache
    with pytest.raises(HookError, match="left"):
        hm.generate(toks, 2, attention_mask=mask.flip(-1))


def test_rwkv_batches_decode_by_recomputation():
    """transformers' rwkv one-token step mixes the rows of a batch: several rows go the recomputation way and
    continue each prompt as it continues alone (one row may use the model's own cache)."""
    from test_adapters_rwkv import make as rwkv_make
    m = rwkv_make("plain")
    hm = hooks.wrap(m)
    x = H.toks(m.config.vocab_size, B=2, n=5)
    g = hm.generate(x, 4)
    assert g.path == "recompute"
    for r in range(2):
        one = hm.generate(x[r:r + 1], 4)
        assert one.path == "cache" and torch.equal(one.tokens[0], g.tokens[r])


def test_a_tiny_temperature_samples_the_argmax_and_bad_sampling_settings_are_refused():
    from hooks.generate import check_sampling, choose
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert choose(logits, True, temperature=1e-310, generator=g).tolist() == [1, 0]   # was NaN probabilities
    for t, p in ((True, 1.0), (float("inf"), 1.0), (1.0, True)):
        with pytest.raises(HookError):
            check_sampling(t, p)
