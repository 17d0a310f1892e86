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
