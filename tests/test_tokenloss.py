"""interp.tokenloss on hand-made inputs: the tagger, delimiter roles and matching, token features
from character offsets, copy features against a brute-force count, windowing, stratification and
the corpus helpers."""
import numpy as np
import pandas as pd
import pytest

from interp import InterpError
from interp import tokenloss as TL


def words(text, domain, path=""):
    """[(word, tag)] in order, from the character annotation."""
    ann = TL.annotate(text, domain, path)
    starts = sorted(set(int(w) for w in ann.word if w >= 0))
    out = []
    for s in starts:
        e = s
        while e < len(text) and ann.word[e] == s:
            e += 1
        out.append((text[s:e], TL.TAGS[ann.tag[s]]))
    return out


def delims(text, domain, path=""):
    """{char index: (role, index of the matching opener or -1)} for every delimiter."""
    ann = TL.annotate(text, domain, path)
    return {i: (TL.DELIMS[d], int(ann.match[i])) for i, d in enumerate(ann.delim) if d}


def test_prose_tags_function_vs_content_words():
    got = dict(words("The cat sat on the mat because it wasn't 42 dogs' bones", "prose"))
    assert got["The"] == got["on"] == got["because"] == got["it"] == "function"
    assert got["cat"] == got["sat"] == got["mat"] == got["bones"] == "content"
    assert got["wasn't"] == "function"          # a contraction is one word, found in the lexicon
    assert got["42"] == "number"
    ann = TL.annotate("a b", "prose")
    assert TL.TAGS[ann.tag[1]] == "space"


def test_prose_delimiters_and_their_openers():
    text = 'He (said "hi") [ok] {x}.'
    d = delims(text, "prose")
    assert d[3] == ("open_bracket", -1) and d[13] == ("close_bracket", 3)
    assert d[9] == ("open_quote", -1) and d[12] == ("close_quote", 9)
    assert d[15] == ("open_bracket", -1) and d[18] == ("close_bracket", 15)
    assert d[20] == ("open_bracket", -1) and d[22] == ("close_bracket", 20)
    assert len(d) == 8


def test_apostrophes_are_not_quotes_but_typographic_quotes_are():
    text = "don’t say “yes” or ‘no’ to the dogs’ owner"
    d = delims(text, "prose")
    assert [(text[i], r) for i, (r, _) in sorted(d.items())] == [
        ("“", "open_quote"), ("”", "close_quote"), ("‘", "open_quote"), ("’", "close_quote")]
    assert d[text.index("”")][1] == text.index("“")      # don’t and dogs’ are apostrophes: not listed above
    assert delims("it's John's 5' pole", "prose") == {}


def test_python_code_keywords_identifiers_strings_and_comments():
    src = "def f(x):\n    return [x, 'a b']  # the end\n"
    got = words(src, "code", "m.py")
    assert got[:3] == [("def", "keyword"), ("f", "identifier"), ("x", "identifier")]
    assert ("return", "keyword") in got
    assert ("the", "function") in got and ("end", "content") in got     # the comment is read as English
    d = delims(src, "code", "m.py")
    o, q = src.index("["), src.index("'")
    assert d[o] == ("open_bracket", -1) and d[src.index("]")] == ("close_bracket", o)
    assert d[q] == ("open_quote", -1) and d[src.index("'", q + 1)] == ("close_quote", q)
    assert d[src.index(")")] == ("close_bracket", src.index("("))


def test_python_triple_quoted_and_fstrings():
    src = 'x = f"{a}b"\ny = """doc (not a bracket"""\n'
    d = delims(src, "code", "m.py")
    fq = src.index('"')
    assert d[fq] == ("open_quote", -1) and d[src.index('"', fq + 1)] == ("close_quote", fq)
    tq = src.index('"""')
    assert d[tq] == ("open_quote", -1) and d[src.rindex('"""')] == ("close_quote", tq)
    # the bracket inside the docstring is read as text: an opener without a closer
    assert d[src.index("(")] == ("open_bracket", -1)


def test_code_that_does_not_tokenize_falls_back_to_the_text_scanner():
    src = "def f(:\n  'unterminated\n"
    d = delims(src, "code", "m.py")
    assert d[src.index("(")][0] == "open_bracket"
    assert dict(words(src, "code", "m.py"))["def"] in ("function", "content")   # no keywords without Python's tokenizer


def test_html_tags_open_close_void_and_attributes():
    html = '<p class="x">Hi <b>there</b><br>"q"</p><!-- c -->'
    d = delims(html, "markup", "a.html")
    p, b, cb, cp = html.index("<p"), html.index("<b>"), html.index("</b>"), html.index("</p>")
    assert d[p] == ("open_tag", -1) and d[b] == ("open_tag", -1)
    assert d[cb] == ("close_tag", b) and d[cp] == ("close_tag", p)
    assert html.index("<br>") not in d and html.index("<!--") not in d     # void element, comment
    q = html.index('"q')
    assert d[q] == ("open_quote", -1) and d[q + 2] == ("close_quote", q)
    assert html.index('"x') not in d                                        # attribute quotes are inside the tag
    ann = TL.annotate(html, "markup", "a.html")
    assert TL.TAGS[ann.tag[p + 1]] == "markup"
    assert dict(words(html, "markup", "a.html")) == {"Hi": "content", "there": "function", "q": "content"}


def test_markdown_is_not_parsed_as_html():
    d = delims("a <b> c", "markup", "x.md")
    assert d == {}
    with pytest.raises(InterpError, match="domain 'poetry' is not valid; valid: prose, code, markup"):
        TL.annotate("x", "poetry")


def test_token_features_from_offsets():
    text = "foo(the bar) unbelievable"
    offs = np.array([[0, 0], [0, 3], [3, 4], [4, 7], [7, 11], [11, 12], [12, 15], [15, 25]])   # BOS first
    f = TL.token_features(TL.annotate(text, "prose"), offs)
    assert list(f["tag"]) == ["other", "content", "punct", "function", "content", "punct", "content", "content"]
    assert list(f["piece"]) == ["-", "first", "-", "first", "first", "-", "first", "cont"]
    assert list(f["delim"]) == ["none", "none", "open_bracket", "none", "none", "close_bracket", "none", "none"]
    assert f["delim_span"][5] == 3 and (np.delete(f["delim_span"], 5) == -1).all()   # ')' closes the '(' 3 tokens back


def test_copy_features_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(5):
        ids = rng.integers(0, 4 + trial, size=40)
        got = TL.copy_features(ids)
        for t in range(len(ids)):
            best, where = 0, -1
            for j in range(t):
                n = 0
                while n <= j and ids[j - n] == ids[t - n]:
                    n += 1
                if n > best or (n == best and n > 0):
                    best, where = n, j
            prev = [j for j in range(t) if ids[j] == ids[t]]
            assert got["copy_len"][t] == best, (trial, t)
            assert got["copy_dist"][t] == (t - where if best else -1)
            assert got["prev_dist"][t] == (t - prev[-1] if prev else -1)


def test_copy_features_on_a_repeated_phrase():
    ids = np.array([5, 1, 2, 3, 9, 1, 2, 3, 4])
    f = TL.copy_features(ids)
    assert list(f["copy_len"]) == [0, 0, 0, 0, 0, 1, 2, 3, 0]
    assert list(f["copy_dist"][5:8]) == [4, 4, 4]


@pytest.mark.parametrize("n,seq_len,stride", [(2, 4, 2), (10, 4, 2), (37, 8, 3), (33, 8, 8), (5, 16, 8)])
def test_windows_score_every_target_once_with_enough_context(n, seq_len, stride):
    wins = TL.windows(n, seq_len, stride)
    scored = [t for b, e, first in wins for t in range(first, e)]
    assert scored == list(range(1, n))
    for k, (b, e, first) in enumerate(wins):
        assert e - b <= seq_len and b <= first
        if k:
            assert first - b >= seq_len - stride


def _frame():
    """Two documents, two windows each; diffs chosen so every mean is easy to check."""
    rows = []
    for doc, dom in (("d1", "prose"), ("d2", "code")):
        for w in range(6):
            for tag, delim, diff in (("content", "none", 1.0), ("function", "none", 0.0), ("punct", "open_bracket", 2.0)):
                rows.append(dict(doc_id=doc, domain=dom, window=w, tag=tag, delim=delim, delim_span=-1, copy_len=0,
                                 copy_dist=-1, loss_a=3.0 + diff, loss_b=3.0,
                                 diff=diff + (0.5 if dom == "code" else 0.0)))
    return pd.DataFrame(rows)


def test_stratify_counts_means_and_excess():
    df = _frame()
    s = TL.stratify(df, facets=["tag", "delimiter"], n_boot=200).set_index(["facet", "category", "domain"])
    assert s.loc[("tag", "content", "prose"), "n"] == 6 and s.loc[("tag", "content", "all"), "n"] == 12
    assert s.loc[("tag", "content", "prose"), "diff"] == pytest.approx(1.0)
    assert s.loc[("tag", "content", "code"), "diff"] == pytest.approx(1.5)
    assert s.loc[("tag", "punct", "all"), "diff"] == pytest.approx(2.25)
    # excess: minus the domain's mean (prose 1.0, code 1.5, all 1.25)
    assert s.loc[("tag", "function", "prose"), "excess"] == pytest.approx(-1.0)
    assert s.loc[("tag", "punct", "code"), "excess"] == pytest.approx(1.0)
    assert s.loc[("delimiter", "open_bracket", "all"), "excess"] == pytest.approx(1.0)
    # each window holds the same tokens: the bootstrap cannot move the prose means at all
    r = s.loc[("tag", "content", "prose")]
    assert r.ci_lo == pytest.approx(1.0) and r.ci_hi == pytest.approx(1.0) and r.clusters == 6
    n_tag = s.xs("tag", level="facet").xs("all", level="domain")["n"].sum()
    assert n_tag == len(df)
    with pytest.raises(InterpError, match="facet 'pos' is not valid; valid: tag, copy n-gram length"):
        TL.stratify(df, facets=["pos"])


def test_stratify_leaves_rare_categories_without_an_interval():
    df = _frame()
    df.loc[0, "tag"] = "number"                         # one token in one window
    s = TL.stratify(df, facets=["tag"], n_boot=100).set_index(["category", "domain"])
    assert s.loc[("number", "prose"), "n"] == 1 and np.isnan(s.loc[("number", "prose"), "ci_lo"])


def test_english_score_domains_and_user_corpus(tmp_path):
    assert TL.english_score("the cat is on the mat and it is warm") > 0.4
    assert TL.english_score("foo_bar = baz(qux) + 1") < 0.2
    assert TL.domain_of("x/y.py") == "code" and TL.domain_of("a.HTML") == "markup" and TL.domain_of("NEWS") == "prose"
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.md").write_text("# title\n")
    (tmp_path / "bin").write_bytes(b"\0\1\2")
    docs = TL.user_corpus([str(tmp_path)])
    assert [(d.domain, d.text) for d in docs] == [("code", "x = 1\n"), ("markup", "# title\n")]
    assert TL.user_corpus([f"prose:{tmp_path / 'a.py'}"])[0].domain == "prose"
    with pytest.raises(InterpError, match="corpus path '/nonexistent/x' not found"):
        TL.user_corpus(["/nonexistent/x"])
    train, ev = TL.split_docs([TL.Document(str(i), "prose", "x" * 10) for i in range(5)], eval_bytes=15)
    assert [d.doc_id for d in ev] == ["0", "1"] and len(train) == 3


def test_default_corpus_is_offline_seeded_and_english():
    a = TL.default_corpus(bytes_per_domain=4000, max_doc_bytes=1500, seed=1)
    b = TL.default_corpus(bytes_per_domain=4000, max_doc_bytes=1500, seed=1)
    assert [d.doc_id for d in a] == [d.doc_id for d in b]
    assert {d.domain for d in a} >= {"code", "prose"}
    assert all(d.n_bytes <= 1500 * 4 for d in a)     # cut to max_doc_bytes characters
    assert all(TL.english_score(d.text) >= 0.2 for d in a if d.domain != "code")
    assert len({d.text for d in a}) == len(a)


# --- E3's arms, batches and statistics over training seeds ---------------------------------------

def test_arm_configs_match_in_size_and_the_window_is_honoured():
    """The three arms have (nearly) equal parameter counts; olmo3_swa is olmo3 with Olmo 3's S S S A pattern:
    with the same weights it gives olmo3's logits wherever the whole prefix fits in the window, and other
    logits past it (the window is really applied)."""
    import torch
    from transformers import AutoModelForCausalLM
    from interp.tokenloss.pair import ARMS, arm_configs, layers_str
    cfgs = arm_configs(64, dict(d=16, layers=4, heads=2, head_dim=8), 32, window=6)
    assert list(cfgs) == list(ARMS)
    assert [layers_str(cfgs[a]) for a in ARMS] == ["A A A A", "S S S A", "G G G A"]
    n = {a: sum(p.numel() for p in AutoModelForCausalLM.from_config(c).parameters()) for a, c in cfgs.items()}
    assert max(n.values()) / min(n.values()) - 1 < 0.02 and n["olmo3"] == n["olmo3_swa"]
    torch.manual_seed(0)
    full = AutoModelForCausalLM.from_config(cfgs["olmo3"]).eval()
    swa = AutoModelForCausalLM.from_config(cfgs["olmo3_swa"]).eval()
    swa.load_state_dict(full.state_dict())
    x = torch.randint(3, 64, (2, 20))
    with torch.no_grad():
        a, b = full(input_ids=x).logits, swa(input_ids=x).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)          # positions 0..5 see at most 6 tokens
    assert (a[:, 6:] - b[:, 6:]).abs().amax() > 1e-3
    assert arm_configs(64, dict(d=16, layers=4, heads=2, head_dim=8), 32)["olmo3_swa"].sliding_window == 16


def test_batch_starts_read_every_window_once_per_pass_and_depend_only_on_the_seed():
    from interp.tokenloss.pair import batch_starts, n_steps, passes
    n_tok, T, B = 1000, 10, 7                       # 99 windows of 10 tokens (a window needs its next token)
    one_pass = np.concatenate([batch_starts(s, B, n_tok, T, seed=3) for s in range(99 // B)])
    assert len(set(one_pass)) == len(one_pass) and set(one_pass) <= set(range(0, 990, 10))
    two = np.concatenate([batch_starts(s, B, n_tok, T, seed=3) for s in range(2 * 99 // B + 1)])
    counts = pd.Series(two[:2 * 99]).value_counts()
    assert (counts == 2).all() and len(counts) == 99           # two passes: every window exactly twice
    assert (batch_starts(5, B, n_tok, T, seed=3) == batch_starts(5, B, n_tok, T, seed=3)).all()
    assert not (batch_starts(5, B, n_tok, T, seed=3) == batch_starts(5, B, n_tok, T, seed=4)).all()
    P = dict(passes=1, seq_len=T, batch=B)
    assert n_steps(P, n_tok) == 14 and passes(P, 14, n_tok) == pytest.approx(14 * 7 / 99)
    assert n_steps({**P, "steps": 5}, n_tok) == 5


def test_seed_summary_findings_and_verdicts():
    from scipy import stats
    from interp.tokenloss import seeds as S
    per = pd.DataFrame(dict(pair="a vs b", facet="tag", category="content", domain="all", n=10, loss_a=2.0,
                            loss_b=1.0, diff=[0.1, 0.3, 0.2], excess=[-0.1, -0.2, -0.3], seed=[0, 1, 2]))
    s = S.seed_summary(per).iloc[0]
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert s.seeds == 3 and s["diff"] == pytest.approx(0.2) and (s.ci_lo, s.ci_hi) == pytest.approx((0.2 - half,
                                                                                                     0.2 + half))
    assert s.excess == pytest.approx(-0.2) and s.excess_hi == pytest.approx(-0.2 + half)
    assert S.verdict(0.2, 0.1, 0.3, +1) == "agrees" and S.verdict(0.2, 0.1, 0.3, -1) == "disagrees"
    assert S.verdict(0.2, -0.1, 0.3, +1) == "inconclusive" and S.verdict(0.2, np.nan, np.nan, +1) == "inconclusive"
    assert S.verdict(0.7, 0.6, 0.8, +1, at=0.5) == "agrees"
    vals = pd.DataFrame(dict(pair="x vs y", seed=[0, 1, 2], overall=[0.2, 0.21, 0.22], tags_better=[1.0, 0.9, 1.0],
                             content_minus_function=[0.1, -0.1, 0.05], copy_excess=[-0.2, -0.3, -0.25],
                             close_excess=[0.2, 0.21, 0.22]))
    rows = S.findings_rows(vals, set()).set_index("measured")
    words = rows.verdict.str.extract(r"\*\*(\w+)\*\*")[0].tolist()
    assert words == ["agrees", "agrees", "inconclusive", "agrees", "disagrees"]
    assert rows.seeds_on_published_side.tolist() == ["3 of 3", "3 of 3", "2 of 3", "3 of 3", "0 of 3"]
    assert S.findings_rows(vals, {"y"}).verdict.str.contains(r"\*\*inconclusive\*\* \(y not shown").all()
    one = S.findings_rows(vals[vals.seed == 0], set()).verdict
    assert one.str.startswith("**inconclusive** (1 training seed, fewer than 3").all()
    two = S.findings_rows(vals.assign(overall=[0.2, 0.201, 0.3])[vals.seed < 2], set()).verdict
    assert two.iloc[0] == "**inconclusive** (2 training seeds, fewer than 3; the interval alone reads agrees)"


def test_unigram_loss_and_the_convergence_column():
    from interp.tokenloss import seeds as S
    train, val = np.array([0, 0, 0, 1]), np.array([5, 0, 1])   # counts +1 over 3 symbols: 4/7, 2/7, 1/7
    assert S.unigram_loss(train, val, 3) == pytest.approx(-(np.log(4 / 7) + np.log(2 / 7)) / 2)
    v = pd.DataFrame(dict(unit=["a"] * 3 + ["b"] * 3, lr=1e-3, seed=[0, 1, 2] * 2, val_acc=0.5,
                          val_loss=[2.0, 2.1, 2.2, 2.9, 3.1, 3.0]))
    t = S.seed_table(v, {"a": 1e-3, "b": 1e-3}, unigram=3.0).set_index("arm")
    assert t.converged.tolist() == ["yes", "no"] and t.loc["a", "val_loss"].startswith("2.100 [")


def test_a_text_run_stopped_by_the_time_budget_resumes_to_the_uninterrupted_weights(tmp_path):
    """train_hf stopped after 2 of 6 steps leaves a checkpoint and a meta.json that `status` reads as 2 steps
    done; the next call resumes there and ends with the weights of a run never interrupted."""
    import torch
    from types import SimpleNamespace
    from safetensors.torch import load_file
    from interp.experiment import status
    from interp.tokenloss.pair import TextCfg, TextRun, arm_configs, train_hf, train_tokenizer
    docs = [TL.Document(f"d{i}", "prose", "The cat sat on the mat because it was warm. " * 20) for i in range(3)]
    tok = train_tokenizer(docs, 300, tmp_path / "tok")
    rng = np.random.default_rng(0)
    stream, val = rng.integers(3, len(tok), 800), rng.integers(3, len(tok), 200)
    P = dict(seq_len=16, batch=2, steps=6, warmup=1, val_windows=4, ckpt_windows=2, eval_batch=4, reserve_s=0)
    cfg = arm_configs(len(tok), dict(d=16, layers=4, heads=2, head_dim=8), 16)["olmo_hybrid"]

    def ctx(stop_after=None):
        calls = iter(range(10**6))
        return SimpleNamespace(runs=tmp_path, seed=1, device="cpu", progress=False,
                               out_of_time=lambda reserve_s=0: stop_after is not None and next(calls) + 1 >= stop_after)
    run = TextRun("olmo_hybrid", 1e-3, 1, TextCfg(cfg, 6), tmp_path)
    assert train_hf("olmo_hybrid", cfg, 1e-3, stream, val, tok, ctx(stop_after=2), P, out=run.out) is None
    st = status(run)
    assert st["steps_done"] == 2 and not st["complete"] and (run.out / "trainer.pt").is_file()
    meta = train_hf("olmo_hybrid", cfg, 1e-3, stream, val, tok, ctx(), P, out=run.out)
    assert status(run)["complete"] and not (run.out / "trainer.pt").exists()
    assert [e[0] for e in meta["evals"]] == [1, 2, 3, 4, 5, 6] and meta["passes"] == pytest.approx(6 * 2 / 49)
    ref = train_hf("olmo_hybrid", cfg, 1e-3, stream, val, tok, ctx(), P, out=tmp_path / "ref")
    a, b = load_file(str(run.out / "model.safetensors")), load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert meta["val_loss"] == pytest.approx(ref["val_loss"], abs=1e-5)
    assert np.allclose(np.array(meta["evals"], float), np.array(ref["evals"], float), atol=1e-5)
