"""Padded batches (hooks): a batch of prompts of different lengths, left or right padded with an attention mask,
gives at every real token what each prompt gives alone: logits, residuals, per-token recurrent states and attention
patterns (pads get weight 0); hook functions act on padded batches as on the prompts alone; the zoo refuses masks."""
import pytest
import torch

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
import hooks
from hooks.names import HookError
from test_adapters_granite_zamba import make as granite_zamba_make
from test_adapters_hf import make as hf_make
from test_adapters_jamba import make as mamba1_make
from test_adapters_kimi import make as kimi_make
from test_adapters_lfm2 import make as lfm2_make
from test_adapters_mamba import make as mamba2_make
from test_adapters_minimax import make as minimax_make
from test_hooks_zoo import make as zoo_make

MODELS = {
    "llama": lambda: hf_make("llama"), "mistral_window": lambda: hf_make("mistral"),
    "qwen3_next": lambda: hf_make("qwen3_next"), "olmo_hybrid": lambda: hf_make("olmo_hybrid"),
    "mamba2": lambda: mamba2_make("mamba2"), "bamba": lambda: mamba2_make("bamba"),
    "mamba": lambda: mamba1_make("mamba"), "jamba": lambda: mamba1_make("jamba"),
    "zamba": lambda: granite_zamba_make("zamba"), "lfm2": lambda: lfm2_make("lfm2"),
    "minimax": lambda: minimax_make(), "kimi": lambda: kimi_make("kimi"),
    **{f"zoo_{lay}": (lambda lay=lay: zoo_make(lay)) for lay in ("gdn75", "gla75-par", "mamba275", "transformer")},
}
model = H.cached(lambda kind: MODELS[kind]())
LENS = (6, 10)


def names_of(hm):
    rec = next((L.index for L in hm.layers if L.rec is not None), None)
    att = next((L.index for L in hm.layers if L.attn is not None), None)
    out = [f"blocks.{hm.n_layers - 1}.resid_post"]
    out += [] if rec is None else [f"blocks.{rec}.rec.state", f"blocks.{rec}.rec.readout"]
    out += [] if att is None else [f"blocks.{att}.attn.pattern"]
    return out


def padded(prompts, side, pad_id=0):
    T = max(len(p) for p in prompts)
    toks = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        sl = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        toks[r, sl], mask[r, sl] = p, 1
    return toks, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_padded_batch_equals_each_prompt_alone(kind, side):
    m = model(kind)
    hm = hooks.wrap(m)
    V = m.config.vocab_size
    prompts = [H.toks(V, B=1, n=n, seed=n)[0] for n in LENS]
    c = assert_padded_equals_each_alone(hm, prompts, side)
    assert torch.equal(c.attention_mask, padded(prompts, side)[1].bool())


def assert_padded_equals_each_alone(hm, prompts, side, pads_zero=True):
    """The batch of ``prompts`` padded on ``side`` against each prompt run alone: logits and `names_of`'s
    activations at every real token (attention patterns: real rows x real columns; ``pads_zero``: pad rows and
    columns exactly 0). Returns the padded run's cache."""
    toks, mask = padded(prompts, side)
    names = names_of(hm)
    with torch.no_grad():
        lg, c = hm.run_with_cache(toks, names=names, attention_mask=mask)
    for r, p in enumerate(prompts):
        real = mask[r].bool()
        with torch.no_grad():
            lg1, c1 = hm.run_with_cache(p[None], names=names)
        torch.testing.assert_close(lg[r, real], lg1[0], atol=2e-5, rtol=1e-4)
        for n in names:
            if n.endswith("attn.pattern"):
                A = c[n][r]
                torch.testing.assert_close(A[:, real][:, :, real], c1[n][0], atol=2e-5, rtol=1e-4)
                assert not pads_zero or ((A[:, :, ~real] == 0).all() and (A[:, ~real] == 0).all())
            else:
                torch.testing.assert_close(c[n][r, real], c1[n][0], atol=2e-5, rtol=1e-4)
    return c


@pytest.mark.parametrize("kind", ["qwen3_next", "mamba2", "llama", "zoo_gdn75"])
def test_hooks_on_a_padded_batch_act_as_on_the_prompt_alone(kind):
    """A hook that zeroes one real token's residual (or state) in a left-padded batch changes that row exactly
    as the same hook on the prompt alone."""
    m = model(kind)
    hm = hooks.wrap(m)
    prompts = [H.toks(m.config.vocab_size, B=1, n=n, seed=n)[0] for n in LENS]
    toks, mask = padded(prompts, "left")
    rec = next((L.index for L in hm.layers if L.rec is not None), None)
    name = f"blocks.{rec}.rec.state" if rec is not None else "blocks.0.resid_post"

    def zero_at(t):
        def fn(x, _):
            x = x.clone()
            x[:, t] = 0
            return x
        return fn
    shift = toks.shape[1] - LENS[0]
    with torch.no_grad():
        lg = hm.run_with_hooks(toks[:1], hooks=[(name, zero_at(shift + 3))], attention_mask=mask[:1])
        alone = hm.run_with_hooks(prompts[0][None], hooks=[(name, zero_at(3))])
        plain = hm(prompts[0][None])
    torch.testing.assert_close(lg[0, shift:], alone[0], atol=2e-5, rtol=1e-4)
    assert (alone[0, 3:] - plain[0, 3:]).abs().max() > 1e-4


def test_pad_helper_and_bad_masks(monkeypatch):
    from interp.tasks.vocab import VOCAB
    from interp.zoo import HybridLM, ZooConfig
    from interp.zoo.hf import attach_tokenizer
    zoo = attach_tokenizer(HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout="gdn50",
                                              n_heads=2, head_dim=16)).eval())
    hm = hooks.wrap(zoo)
    hm.run_with_cache(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1, 1]] * 2))
    monkeypatch.setattr(type(hm.adapter), "padding", False)   # an adapter without padding (interop, mamba-ssm)
    with pytest.raises(HookError, match="padded batches are supported for HF models"):
        hm.run_with_cache(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1, 1]] * 2))
    # all ones is no padding: fine everywhere
    hm.run_with_hooks(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5))
    m = model("llama")
    hl = hooks.wrap(m)
    x = torch.ones(2, 5, dtype=torch.long)
    for bad, match in [(torch.ones(2, 4), "shape"), (torch.full((2, 5), 2), "0 \\(padding\\)"),
                       (torch.tensor([[0] * 5, [1] * 5]), "no real token")]:
        with pytest.raises(HookError, match=match):
            hl.run_with_cache(x, attention_mask=bad)
    toks, mask = hooks.wrap(zoo).pad(["<bos> x0 = 3", "<bos> x0 = 3 ; x1 = 5"], side="left")
    assert toks.shape == mask.shape == (2, 8) and mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert toks[0, 4:].tolist() == toks[1, :4].tolist()
    with pytest.raises(HookError, match="side"):
        hooks.wrap(zoo).pad(["a"], side="middle")


def _hf_checkpoint(path, pad="<pad>"):
    """A tiny qwen3_next (GDN + attention) saved with a word-level tokenizer (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<pad>", "<unk>"] + [f"w{i}" for i in range(40)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pad, unk_token="<unk>").save_pretrained(path)
    model("qwen3_next").save_pretrained(path)
    return path


def test_capture_text_lines_pads_and_equals_each_line_alone(tmp_path):
    """`interp capture --text F --lines`: one example per line, left-padded; the stored mask marks the real tokens,
    and the captures there equal each line captured alone."""
    from interp.capture import load_capture
    from interp.cli import main
    ckpt = _hf_checkpoint(tmp_path / "ckpt")
    lines = ["w3 w5 w7", "w1 w2 w3 w4 w5 w6", "", "w9 w8 w7 w6 w5"]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    names = "blocks.0.rec.state,blocks.3.attn.pattern,blocks.3.resid_post"
    out = tmp_path / "cap"
    assert main(["capture", "--model", str(ckpt), "--text", str(tmp_path / "t.txt"), "--lines", "--names", names,
                 "--out", str(out), "--batch-size", "2"]) == 0
    c = load_capture(out)
    mask = c.labels["attention_mask"].bool()
    assert c.tokens.shape == mask.shape == (3, 6) and mask.sum(1).tolist() == [3, 6, 5]
    hm = hooks.wrap(model("qwen3_next"))
    for r, ln in enumerate([ln for ln in lines if ln]):
        ids = torch.tensor([[int(w[1:]) + 2 for w in ln.split()]])
        assert torch.equal(c.tokens[r, mask[r]], ids[0])
        with torch.no_grad():
            _, one = hm.run_with_cache(ids, names=names.split(","))
        torch.testing.assert_close(c["blocks.0.rec.state"][r, mask[r]], one["blocks.0.rec.state"][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(c["blocks.3.resid_post"][r, mask[r]], one["blocks.3.resid_post"][0], atol=2e-5, rtol=1e-4)
        A = c["blocks.3.attn.pattern"][r]
        torch.testing.assert_close(A[:, mask[r]][:, :, mask[r]], one["blocks.3.attn.pattern"][0], atol=2e-5, rtol=1e-4)
    # --lines without --text: one line, exit 2
    assert main(["capture", "--model", str(ckpt), "--task", "mqar", "--lines", "--out", str(tmp_path / "x")]) == 2


def test_capture_text_lines_pads_zoo_lines_and_equals_each_line_alone(tmp_path):
    """Zoo lines of different word counts: left-padded with the task vocabulary's <pad>, captures at real tokens equal
    each line captured alone."""
    from interp.capture import load_capture
    from interp.cli import main
    from interp.models import load_any
    from interp.tasks import VOCAB
    lines = ["<bos> x0 = 3 ;", "<bos> x0 = 3 ; x1 = 5 ; x0 += x1 ;", "<bos> x1 = 2 ; x1 += x1 ;"]
    (tmp_path / "z.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "y"
    assert main(["capture", "--model", "gdn75", "--text", str(tmp_path / "z.txt"), "--lines", "--out", str(out),
                 "--batch-size", "2"]) == 0
    c = load_capture(out)
    mask = c.labels["attention_mask"].bool()
    assert mask.sum(1).tolist() == [len(ln.split()) for ln in lines] and mask[:, -1].all()
    hm = hooks.wrap(load_any("gdn75")[0])
    names = [n for n in hm.hook_names if n.endswith(("resid_post", "rec.state"))]
    assert sorted(c) == sorted(names)
    for r, ln in enumerate(lines):
        ids = torch.tensor([VOCAB.encode(ln.split())])
        assert torch.equal(c.tokens[r, mask[r]], ids[0]) and (c.tokens[r, ~mask[r]] == VOCAB.id("<pad>")).all()
        with torch.no_grad():
            _, one = hm.run_with_cache(ids, names=names)
        for n in names:
            torch.testing.assert_close(c[n][r, mask[r]], one[n][0], atol=2e-5, rtol=1e-4)


def test_text_input_checks(tmp_path, capsys):
    """--text: words the tokenizer cannot spell are refused (not captured as <unk>); lines end at newlines only;
    kept --positions that are pads in some line, and a text's left-out tail, are said; each input's own options."""
    from interp.capture import load_capture
    from interp.cli import main
    ckpt = _hf_checkpoint(tmp_path / "ckpt")
    t = tmp_path / "t.txt"
    base = ["capture", "--model", str(ckpt), "--text", str(t), "--names", "blocks.0.resid_post"]
    t.write_text("w3 w5 hello w7\nw1 w2\n")
    for extra in (["--lines"], ["--seq-len", "2"]):
        assert main(base + extra + ["--out", str(tmp_path / "u")]) == 2
        err = capsys.readouterr().err
        assert "the tokenizer cannot spell some of the text: '<unk>' (id 1) in " in err, err
        assert ("line 1;" in err) if extra == ["--lines"] else ("the text;" in err)
    assert not (tmp_path / "u").exists()
    padunk = _hf_checkpoint(tmp_path / "padunk", pad="<unk>")   # Llama-style: the pad token is the unk token
    assert main(["capture", "--model", str(padunk), "--text", str(t), "--lines", "--out", str(tmp_path / "u")]) == 2
    assert "cannot spell some of the text" in capsys.readouterr().err
    assert main(base + ["--positions", "0:99999999999999999999", "--out", str(tmp_path / "u")]) == 2
    assert "position 99999999999999999998 out of range; valid: positions of the input" in capsys.readouterr().err
    t.write_text("w3 w5\x0cw6 w7\nw1 w2\n")   # a form feed inside a line: two lines, as wc -l counts
    assert main(base + ["--lines", "--positions", "0,3", "--out", str(tmp_path / "l")]) == 0
    err = capsys.readouterr().err
    assert load_capture(tmp_path / "l").tokens.shape[0] == 2
    assert "warning: --positions 0,3 with --lines: 1 of 2 lines have padding at a kept position (1 of 4 rows)" in err
    t.write_text("w1 w2 w3 w4 w5")
    assert main(base + ["--seq-len", "2", "--out", str(tmp_path / "s")]) == 0
    assert "warning: --text: 5 tokens make 2 windows of --seq-len 2; the last 1 tokens are left out" in \
        capsys.readouterr().err
    for extra, msg in [(["--n", "5"], "--n does not apply to --text"), (["--seed", "1"], "--seed does not apply"),
                       (["--knob", "n_pairs=2"], "--knob does not apply to --text"), (["--names", " "], "names no hook")]:
        assert main(base + extra + ["--out", str(tmp_path / "v")]) == 2
        assert msg in capsys.readouterr().err
    assert main(["capture", "--model", "gdn75", "--task", "mqar", "--seq-len", "9", "--out", str(tmp_path / "w")]) == 2
    assert "--seq-len does not apply to --task" in capsys.readouterr().err


def test_masks_with_gaps_empty_tokens_and_unknown_devices_are_refused():
    hm = hooks.wrap(model("llama"))
    x = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(HookError, match="row 1 of attention_mask has padding between real tokens; valid: padding on "
                                        "the left or the right only"):
        hm.run_with_cache(x, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1]]))
    hm.run_with_cache(x, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]))   # left, right: fine
    for bad in (x[:, :0], x[:0]):
        with pytest.raises(HookError, match="are empty; valid: at least one sequence of at least one token"):
            hm.run_with_cache(bad)
    for bad in ("banana", "meta", "mps"):
        with pytest.raises(HookError, match=f"device '{bad}' is not valid"):
            hm.run_with_cache(x, device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(HookError, match="device 'cuda' is not available here"):
            hm.run_with_cache(x, device="cuda")
