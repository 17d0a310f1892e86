"""Daily-driver conveniences (issue 23): (a) zoo models from `interp.zoo.load_model` / `interp.models.load_any`
take string prompts out of the box (the word tokenizer attached, built only on first use); (b) the
interactive HTML view of one example's patterns (`interp patterns --html`, circuitsvis), its data equal to
the patterns, its scripts runnable, and a one-line error where circuitsvis is missing. CPU."""
import copy
import json
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import hooks
from interp import InterpError
from interp import patterns as P
from interp import tasks
from interp.demo import default_model_path
from interp.models import load_any
from interp.tasks import VOCAB
from interp.zoo import HybridLM, WordTokenizer, ZooConfig, load_model, save_model

PROMPT = "<bos> k1 5 k2 7 k1"


def ids(prompt):
    return torch.tensor([[VOCAB.words.index(w) for w in prompt.split()]])


# --- (a) string prompts on zoo models ------------------------------------------------------------------

def test_shipped_model_takes_string_prompts():
    m = load_model(default_model_path("gdn75"))
    assert isinstance(m.tokenizer, WordTokenizer)
    hm = hooks.wrap(m)
    names = ["blocks.0.resid_post", "blocks.3.attn.pattern"]
    with torch.no_grad():
        lg, c = hm.run_with_cache(PROMPT, names=names)
        ref, rc = hm.run_with_cache(ids(PROMPT), names=names)
        lg2, _ = hm.run_with_cache([PROMPT, PROMPT], names=names)
        ref2 = hm(ids(PROMPT).repeat(2, 1))
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)
    torch.testing.assert_close(lg2, ref2, atol=0, rtol=0)
    for n in names:
        torch.testing.assert_close(c[n], rc[n], atol=0, rtol=0)
    assert hm.to_single_token("k2") == VOCAB.words.index("k2")
    assert m.tokenizer.decode(ids(PROMPT)[0].tolist()) == PROMPT          # the whole HF tokenizer behind it


def test_load_any_and_saved_models_carry_it(tmp_path):
    for spec in ("transformer", "gdn100"):
        m, kind = load_any(spec)
        assert kind == "zoo" and hooks.wrap(m).to_tokens(PROMPT).tolist() == ids(PROMPT).tolist()
    torch.manual_seed(0)
    fresh = HybridLM(ZooConfig(vocab_size=len(VOCAB.words), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                               head_dim=16))
    assert getattr(fresh, "tokenizer", None) is None                     # built in code: none until attached
    save_model(fresh, tmp_path / "m")
    m, _ = load_any(str(tmp_path / "m"))
    with torch.no_grad():
        torch.testing.assert_close(hooks.wrap(m)(PROMPT), fresh(ids(PROMPT)), atol=0, rtol=0)
    assert "tokenizer" not in m.state_dict() and copy.deepcopy(m).tokenizer is m.tokenizer
    back = pickle.loads(pickle.dumps(m))
    assert hooks.wrap(back).to_tokens(PROMPT).tolist() == ids(PROMPT).tolist()


def test_loading_stays_free_of_transformers():
    """The tokenizer is built (transformers imported) on the first string, not when the model loads."""
    code = ("import sys, hooks\nfrom interp.demo import default_model_path\nfrom interp.zoo import load_model\n"
            "m = load_model(default_model_path('gdn75'))\nhm = hooks.wrap(m)\nhm(hm.to_tokens([[1, 81]]))\n"
            "assert 'transformers' not in sys.modules, 'imported on load'\n"
            f"assert hm.to_tokens({PROMPT!r}).shape == (1, 6)\nassert 'transformers' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


# --- (b) the interactive HTML view -------------------------------------------------------------------

def panels_of(page):
    """The props of every CircuitsVis.render call of a page, in order."""
    calls = re.findall(r"CircuitsVis\.render\('p\d+', CircuitsVis\.AttentionHeads, (.*?)\);</script>", page)
    return [json.loads(c) for c in calls]


def small(layout, seed=0):
    torch.manual_seed(seed)
    return HybridLM(ZooConfig(vocab_size=len(VOCAB.words), d_model=32, n_layers=4, layout=layout, n_heads=2,
                              head_dim=16, mamba_head_dim=16, mamba_state=8)).eval()


@pytest.mark.parametrize("layout", ["gdn75-par", "mamba275"])
def test_every_layer_from_one_forward_equals_each_layer(layout):
    m = small(layout)
    b = tasks.generate("mqar", 2, seed=3)
    panels, words = P.example_patterns(m, b, 1)
    hm = hooks.wrap(m)
    want = [(L.index, k) for L in hm.layers for k, x in (("attn", L.attn), ("rec", L.rec)) if x is not None]
    assert [(i, "attn" if k == "attn" else "rec") for i, k, _ in panels] == want
    assert len(want) == (5 if layout.endswith("par") else 4)             # the parallel layer gives both
    for (i, k), (_, kind, A) in zip(want, panels):
        A1, kind1, words1 = P.example_pattern(m, b, i, 1, k)
        assert kind == kind1 and words == words1
        np.testing.assert_allclose(A, A1, atol=1e-6, rtol=1e-5)


def test_html_holds_the_patterns(tmp_path):
    pytest.importorskip("circuitsvis")
    m = load_model(default_model_path("gdn75"))
    b = tasks.generate("mqar", 1, seed=0)
    panels, words = P.example_patterns(m, b, 0)
    rows, src = P.example_marks(b, 0)
    page = P.pattern_html(panels, words, tmp_path / "p.html", "a <title>", rows, src).read_text()
    assert page.count("</script") == len(panels) + 1 and "<!--" not in page       # no script closes early
    assert "var CircuitsVis=" in page and "unpkg.com" not in page                 # inlined: opens offline
    assert "a &lt;title&gt;" in page and f"{rows[0]} &#x27;{words[rows[0]]}&#x27; &rarr; source {src[0]}" in page
    got = panels_of(page)
    assert len(got) == len(panels) == 12
    for (layer, kind, A), p in zip(panels, got):
        m_ = float(np.abs(A).max())
        np.testing.assert_allclose(np.array(p["attention"]), A, atol=1e-3 * m_, rtol=0)
        assert p["tokens"] == words and p["maxValue"] == pytest.approx(m_)
        assert p["minValue"] == (0 if kind == "attn" else pytest.approx(-m_))
        assert p["attentionHeadNames"] == [f"L{layer} h{h}" for h in range(A.shape[0])]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_html_scripts_run(tmp_path):
    """The inlined bundle defines CircuitsVis.render / AttentionHeads and every panel's script calls it."""
    pytest.importorskip("circuitsvis")
    A = np.tril(np.random.default_rng(0).random((2, 4, 4))).astype(np.float32)
    path = P.pattern_html([(0, "attn", A), (1, "gdn", -A)], ["<bos>", "</script>", "a", "b"], tmp_path / "p.html")
    js = r"""const fs = require('fs'), vm = require('vm');
const s = [...fs.readFileSync(process.argv[1], 'utf8').matchAll(/<script>([\s\S]*?)<\/script>/g)].map(m => m[1]);
const ctx = {console, navigator: {userAgent: 'node'}, setTimeout, clearTimeout}; ctx.window = ctx.self = ctx;
vm.createContext(ctx); vm.runInContext(s[0], ctx);
if (typeof ctx.CircuitsVis.render !== 'function' || !ctx.CircuitsVis.AttentionHeads) throw new Error('no API');
const calls = []; ctx.CircuitsVis = {render: (id, c, p) => calls.push([id, p.tokens[1], p.attention.length])};
for (const x of s.slice(1)) vm.runInContext(x, ctx);
console.log(JSON.stringify(calls));"""
    r = subprocess.run(["node", "-e", js, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == [["p0", "</script>", 2], ["p1", "</script>", 2]]


def cli(*argv):
    from interp.cli import main
    return main(["patterns", *argv])


def test_cli_html(tmp_path, capsys):
    pytest.importorskip("circuitsvis")
    assert cli("--model", "gdn75", "--task", "state_recall", "--layer", "3", "--html", "--out", str(tmp_path)) == 0
    one = tmp_path / "gdn75_state_recall_L3_ex0.html"
    assert len(panels_of(one.read_text())) == 1 and not list(tmp_path.glob("*.png"))
    assert cli("--model", "gdn75", "--task", "mqar", "--example", "1", "--html", "--out", str(tmp_path)) == 0
    every = (tmp_path / "gdn75_mqar_ex1.html").read_text()
    assert len(panels_of(every)) == 12 and "every layer" in every
    assert "wrote" in capsys.readouterr().out
    assert cli("--who-reads", "--html", "--out", str(tmp_path)) == 2
    assert "no HTML view" in capsys.readouterr().err


def test_html_without_circuitsvis_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "circuitsvis", None)               # import circuitsvis -> ImportError
    with pytest.raises(InterpError, match="pip install circuitsvis"):
        P.pattern_html([(0, "attn", np.zeros((1, 2, 2)))], ["a", "b"], tmp_path / "p.html")
    assert cli("--model", "gdn75", "--layer", "3", "--html", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install circuitsvis" in err and not list(tmp_path.iterdir())
