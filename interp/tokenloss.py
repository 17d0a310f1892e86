"""Token-level loss decomposition: which tokens does model B predict better than model A?

Two causal LMs that share a tokenizer read the same text; every token gets both models' loss
(-log p of the token given its context) and features that say what kind of token it is:

* **tag family** of the word the token belongs to: ``function`` (closed-class English word, from
  the shipped lexicon `FUNCTION_WORDS`), ``content`` (any other alphabetic word: open class),
  ``keyword`` / ``identifier`` (Python code, from the stdlib tokenizer), ``number``, ``punct``,
  ``markup`` (inside an HTML tag), ``space``; ``piece`` says whether the token starts its word
  (``first``) or continues it (``cont``).
* **copy features** over the context the model sees: ``copy_len`` = the longest n such that the
  n-gram ending at this token occurred earlier (0: the token is new; n: an (n-1)-token prefix
  match followed by this very token, what an induction mechanism can copy), ``copy_dist`` = how
  far back that earlier occurrence is (tokens), ``prev_dist`` = distance to the previous
  occurrence of the token itself.
* **delimiters**: ``delim`` in ``open_bracket`` / ``close_bracket`` (``()[]{}``), ``open_quote`` /
  ``close_quote`` (ASCII quotes by position, typographic quotes by shape, Python string quotes
  from the tokenizer, backticks), ``open_tag`` / ``close_tag`` (HTML), with ``delim_span`` the
  distance in tokens from a closing delimiter back to its opener.

`compare` returns a tidy `TokenLosses` DataFrame (one row per scored token; ``diff = loss_a -
loss_b`` > 0 where model B is better); `TokenLosses.stratify` gives the mean difference per
category with cluster-bootstrap confidence intervals (clusters: context windows) and
`TokenLosses.plot` the bar figure. `task_losses` does the same for the synthetic tasks
(`interp.tasks`), per token role (answer, closing bracket). `default_corpus` assembles a corpus of
prose, code and markup from text already on the machine (no downloads).

Long texts are cut into windows of ``seq_len`` tokens that overlap by ``seq_len - stride``; each
token is scored once, in the first window where it is not in the overlap, so it sees at least
``seq_len - stride`` tokens of context (except near the start of its document).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import keyword
import os
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from interp import InterpError

DOMAINS = ("prose", "code", "markup")
TAGS = ("content", "function", "keyword", "identifier", "number", "punct", "markup", "space", "other")
DELIMS = ("none", "open_bracket", "close_bracket", "open_quote", "close_quote", "open_tag", "close_tag")
_TAG = {t: i for i, t in enumerate(TAGS)}
_DEL = {d: i for i, d in enumerate(DELIMS)}

# --- the lexicon --------------------------------------------------------------------------------

#: English closed-class (function) words, written for this toolkit: articles and determiners,
#: quantifiers, personal / possessive / reflexive / relative / interrogative / indefinite pronouns,
#: prepositions, coordinating and subordinating conjunctions, auxiliaries and modals (all forms),
#: negation and particles, wh-adverbs, cardinal numerals one..ten, and the common conjunctive and
#: degree adverbs that function-word lists include (then, thus, however, very, also, only, ...),
#: plus contractions. Every other alphabetic word is ``content`` (open class).
FUNCTION_WORDS = frozenset("""
a an the this that these those my your his her its our their whose which what whatever whichever
some any no every each either neither all both half several many much more most few fewer fewest
less least little other another such enough
i me mine myself you yours yourself yourselves he him himself she hers herself it itself we us ours
ourselves they them theirs themselves one oneself who whom whoever whomever someone somebody
something anyone anybody anything everyone everybody everything nobody nothing none
about above across after against along amid among amongst around as at before behind below beneath
beside besides between beyond but by despite down during except for from in inside into like near
of off on onto out outside over past per since than through throughout till to toward towards under
underneath unlike until up upon via with within without versus
and or nor so yet although though because if unless whereas while whilst whether once lest
be am is are was were been being have has had having do does did doing will would shall should can
could may might must ought cannot
not n't 's 're 've 'll 'd 'm
don't doesn't didn't isn't aren't wasn't weren't won't wouldn't can't couldn't shouldn't mustn't
haven't hasn't hadn't shan't i'm you're we're they're it's that's there's here's what's who's
let's i've you've we've they've i'll you'll he'll she'll we'll they'll i'd you'd he'd she'd we'd
they'd he's she's
there here when where why how wherever whenever however
then thus hence therefore otherwise also only even just very too quite rather else instead
two three four five six seven eight nine ten
""".split())

# --- character-level annotation -----------------------------------------------------------------

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_TAGRE = re.compile(r"<(/?)([A-Za-z][\w:.-]*)\b[^<>]*?(/?)>|<!--.*?-->|<![^<>]*>|<\?[^<>]*\?>", re.S)
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_OPEN, _CLOSE = "([{", ")]}"
_QUOTE_OPENERS = set(" \t\n\r([{<>-–—/=:")   # a quote after one of these opens


@dataclass
class CharAnn:
    """Per-character annotation of a text: tag family code, start index of the containing word
    (-1: not in a word), delimiter role code, and for closing delimiters the index of the opener
    (-1 otherwise / unmatched)."""
    tag: np.ndarray
    word: np.ndarray
    delim: np.ndarray
    match: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "CharAnn":
        return cls(np.full(n, _TAG["punct"], np.int8), np.full(n, -1, np.int64), np.zeros(n, np.int8),
                   np.full(n, -1, np.int64))


def _word_tag(w: str) -> str:
    core = w.replace("’", "'")
    if core.replace("'", "").isdigit():
        return "number"
    if core.replace("'", "").isalpha():
        return "function" if core.lower() in FUNCTION_WORDS else "content"
    return "identifier"


def _text_words(text: str, ann: CharAnn, lo: int, hi: int):
    """Tag words, numbers and whitespace of text[lo:hi] (generic scanner)."""
    seg = text[lo:hi]
    for i, ch in enumerate(seg):
        if ch.isspace():
            ann.tag[lo + i] = _TAG["space"]
    for m in _WORD.finditer(seg):
        s, e = lo + m.start(), lo + m.end()
        ann.tag[s:e] = _TAG[_word_tag(m.group())]
        ann.word[s:e] = s


def _text_delims(text: str, ann: CharAnn, lo: int, hi: int, skip=None):
    """Brackets, quotes and backticks of text[lo:hi]; positions in ``skip`` (a bool array over the
    text) are ignored. Openers are matched to closers with one stack per delimiter kind."""
    stacks: dict = {}
    for i in range(lo, hi):
        if skip is not None and skip[i]:
            continue
        ch = text[i]
        if ch in _OPEN:
            ann.delim[i] = _DEL["open_bracket"]
            stacks.setdefault(ch, []).append(i)
        elif ch in _CLOSE:
            ann.delim[i] = _DEL["close_bracket"]
            st = stacks.get(_OPEN[_CLOSE.index(ch)])
            ann.match[i] = st.pop() if st else -1
        elif ch in "“‘":
            ann.delim[i] = _DEL["open_quote"]
            stacks.setdefault(ch, []).append(i)
        elif ch in "”’":
            prev, nxt = text[i - 1] if i else " ", text[i + 1] if i + 1 < len(text) else " "
            if ch == "’" and prev.isalnum() and nxt.isalnum():
                continue  # apostrophe
            st = stacks.get("“" if ch == "”" else "‘")
            if ch == "’" and not st:
                continue  # a bare ’ with nothing open is an apostrophe (dogs’)
            ann.delim[i] = _DEL["close_quote"]
            ann.match[i] = st.pop() if st else -1
        elif ch in "\"'`":
            st = stacks.setdefault(ch, [])
            prev = text[i - 1] if i > lo else " "
            nxt = text[i + 1] if i + 1 < hi else " "
            if ch == "`":
                opening = not st
            elif ch == "'" and prev.isalnum() and nxt.isalnum():
                continue                                    # don't
            elif prev in _QUOTE_OPENERS or i == lo:
                opening = True
            elif st:
                opening = False
            else:
                continue                                    # dogs', 5" with nothing open
            if opening:
                ann.delim[i] = _DEL["open_quote"]
                st.append(i)
            else:
                ann.delim[i] = _DEL["close_quote"]
                ann.match[i] = st.pop()
        if ch == "\n" and i + 1 < hi and text[i + 1] == "\n":   # quotes do not run across paragraphs
            for q in "\"'`":
                stacks.pop(q, None)


def _annotate_text(text: str, ann: CharAnn, lo: int, hi: int, html: bool):
    _text_words(text, ann, lo, hi)
    skip = None
    if html:
        skip = np.zeros(len(text), bool)
        stack: list = []
        for m in _TAGRE.finditer(text, lo, hi):
            s, e = m.start(), m.end()
            ann.tag[s:e] = _TAG["markup"]
            ann.word[s:e] = -1
            skip[s:e] = True
            if m.group(2) is None or m.group(3) or m.group(2).lower() in _VOID:
                continue   # comment, doctype, self-closing or void element
            name = m.group(2).lower()
            if m.group(1):
                ann.delim[s] = _DEL["close_tag"]
                j = max((k for k, (n, _) in enumerate(stack) if n == name), default=None)
                if j is not None:
                    ann.match[s] = stack[j][1]
                    del stack[j:]
            else:
                ann.delim[s] = _DEL["open_tag"]
                stack.append((name, s))
    _text_delims(text, ann, lo, hi, skip)


def _annotate_python(text: str, ann: CharAnn) -> bool:
    """Exact annotation of Python source with the stdlib tokenizer (False if it does not tokenize):
    names are keywords or identifiers, brackets come from OP tokens, quotes from STRING tokens;
    comments and string contents are annotated as text (English words in docstrings are words)."""
    starts = np.cumsum([0] + [len(x) for x in text.splitlines(keepends=True)])

    def off(rc):
        return int(starts[rc[0] - 1]) + rc[1]
    fs_start = getattr(tokenize, "FSTRING_START", -1)
    fs_mid = getattr(tokenize, "FSTRING_MIDDLE", -1)
    fs_end = getattr(tokenize, "FSTRING_END", -1)
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError, ValueError):
        return False
    brackets: list = []
    fstrings: list = []
    for i, ch in enumerate(text):
        if ch.isspace():
            ann.tag[i] = _TAG["space"]
    for t in toks:
        s, e = off(t.start), off(t.end)
        if t.type == tokenize.NAME:
            ann.tag[s:e] = _TAG["keyword" if keyword.iskeyword(t.string) or keyword.issoftkeyword(t.string)
                                else "identifier"]
            ann.word[s:e] = s
        elif t.type == tokenize.NUMBER:
            ann.tag[s:e] = _TAG["number"]
            ann.word[s:e] = s
        elif t.type == tokenize.OP:
            if t.string in _OPEN:
                ann.delim[s] = _DEL["open_bracket"]
                brackets.append((t.string, s))
            elif t.string in _CLOSE:
                ann.delim[s] = _DEL["close_bracket"]
                want = _OPEN[_CLOSE.index(t.string)]
                if brackets and brackets[-1][0] == want:
                    ann.match[s] = brackets.pop()[1]
        elif t.type == tokenize.COMMENT:
            _annotate_text(text, ann, s + 1, e, html=False)
        elif t.type == tokenize.STRING:
            body = t.string.lstrip("rRbBuUfF")
            q = 3 if body[:3] in ('"""', "'''") else 1
            qs = s + len(t.string) - len(body)
            ann.delim[qs] = _DEL["open_quote"]
            ann.delim[e - q] = _DEL["close_quote"]
            ann.match[e - q] = qs
            _annotate_text(text, ann, qs + q, e - q, html=False)
        elif t.type == fs_start:
            qs = e - (3 if t.string[-3:] in ('"""', "'''") else 1)
            ann.delim[qs] = _DEL["open_quote"]
            fstrings.append(qs)
        elif t.type == fs_mid:
            _annotate_text(text, ann, s, e, html=False)
        elif t.type == fs_end:
            ann.delim[s] = _DEL["close_quote"]
            ann.match[s] = fstrings.pop() if fstrings else -1
    return True


def annotate(text: str, domain: str, path: str = "") -> CharAnn:
    """Character-level tags and delimiters of one document (see the module docstring)."""
    if domain not in DOMAINS:
        raise InterpError(f"domain '{domain}' is not valid; valid: {', '.join(DOMAINS)}")
    ann = CharAnn.empty(len(text))
    if domain == "code" and (path.endswith(".py") or not path) and _annotate_python(text, ann):
        return ann
    ann = CharAnn.empty(len(text))
    html = domain == "markup" and (path.lower().endswith((".html", ".htm", ".xml", ".xhtml")) or
                                   (not path and "</" in text))
    _annotate_text(text, ann, 0, len(text), html)
    return ann


def token_features(ann: CharAnn, offsets: np.ndarray) -> dict:
    """Per-token tag / piece / delimiter from the character annotation; ``offsets`` [N, 2] char
    spans of the tokens (end exclusive)."""
    n_chars = len(ann.tag)
    s = np.clip(offsets[:, 0], 0, n_chars)
    e = np.clip(offsets[:, 1], 0, n_chars)
    idx = np.arange(n_chars + 1)
    # first non-space char at or after i, and first delimiter at or after i
    nonspace = np.where(np.append(ann.tag != _TAG["space"], True), idx, n_chars)
    nxt_ns = np.minimum.accumulate(nonspace[::-1])[::-1]
    isdel = np.where(np.append(ann.delim != 0, True), idx, n_chars)
    nxt_del = np.minimum.accumulate(isdel[::-1])[::-1]
    tag_ext = np.append(ann.tag, _TAG["other"])
    word_ext = np.append(ann.word, -1)
    first = nxt_ns[s]
    has = first < e
    empty = e <= s
    tag = np.where(has, tag_ext[np.minimum(first, n_chars)], _TAG["space"])
    tag = np.where(empty, _TAG["other"], tag)
    w = word_ext[np.minimum(first, n_chars)]
    piece = np.where(~has | (w < 0), "-", np.where(w == first, "first", "cont"))
    d = nxt_del[s]
    hasd = d < e
    delim = np.where(hasd, np.append(ann.delim, 0)[np.minimum(d, n_chars)], 0)
    mchar = np.where(hasd, np.append(ann.match, -1)[np.minimum(d, n_chars)], -1)
    mtok = np.where(mchar >= 0, np.searchsorted(s, mchar, side="right") - 1, -1)
    span = np.where(mtok >= 0, np.arange(len(s)) - mtok, -1)
    return {"tag": np.asarray(TAGS, dtype=object)[tag], "piece": piece,
            "delim": np.asarray(DELIMS, dtype=object)[delim], "delim_span": span}


def copy_features(ids: np.ndarray, upto: int | None = None) -> dict:
    """Per position t of one window: ``copy_len`` (longest n-gram ending at t that also ends at an
    earlier position of the window), ``copy_dist`` (t minus the most recent such position; -1 if
    none) and ``prev_dist`` (distance to the previous occurrence of ids[t]; -1 if none). Only the
    first ``upto`` positions are computed (default all)."""
    T = len(ids) if upto is None else upto
    ids = np.asarray(ids[:T])
    copy_len = np.zeros(T, np.int64)
    copy_dist = np.full(T, -1, np.int64)
    prev_dist = np.full(T, -1, np.int64)
    run = np.zeros(T, np.int64)
    last: dict = {}
    for t in range(T):
        eq = ids[:t] == ids[t]
        new = np.zeros(T, np.int64)
        if t:
            new[:t] = eq * (np.concatenate(([0], run[:t - 1])) + 1)
            m = new[:t].max()
            if m:
                copy_len[t] = m
                copy_dist[t] = t - (t - 1 - int(np.argmax(new[:t][::-1] == m)))
        p = last.get(int(ids[t]))
        if p is not None:
            prev_dist[t] = t - p
        last[int(ids[t])] = t
        run = new
    return {"copy_len": copy_len, "copy_dist": copy_dist, "prev_dist": prev_dist}


# --- corpus -------------------------------------------------------------------------------------

@dataclass
class Document:
    doc_id: str
    domain: str
    text: str
    path: str = ""

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


CODE_EXT = (".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".js", ".ts", ".java", ".go", ".rs", ".rb",
            ".sh", ".lua", ".pl", ".php", ".cs", ".swift", ".kt", ".scala", ".r", ".jl")
MARKUP_EXT = (".html", ".htm", ".xml", ".xhtml", ".md", ".markdown", ".rst", ".tex")


def domain_of(path: str) -> str:
    p = path.lower()
    if p.endswith(CODE_EXT):
        return "code"
    if p.endswith(MARKUP_EXT):
        return "markup"
    return "prose"


def _read(path: Path, max_chars: int) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\0" in raw[:4096]:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) > max_chars:   # cut at a line boundary
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut + 1 if cut > max_chars // 2 else max_chars]
    return text


def english_score(text: str) -> float:
    """Fraction of alphabetic words that are function words (English prose: about 0.4-0.55)."""
    words = [w.lower() for w in re.findall(r"[A-Za-z]+(?:'[a-z]+)?", text)]
    return sum(w in FUNCTION_WORDS for w in words) / max(len(words), 1)


def _stdlib() -> Path:
    import sysconfig
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=None)
def _walk(root: str, exts: tuple, names: tuple = (), skip_dirs: tuple = ()) -> tuple:
    """Sorted files under ``root`` whose suffix is in ``exts`` or whose lower-cased name is in
    ``names`` (one os.walk; symlinks not followed; directories named in ``skip_dirs`` pruned)."""
    out = []
    for dp, dn, fn in os.walk(root):
        dn[:] = [d for d in dn if d not in skip_dirs and d != "__pycache__"]
        for f in fn:
            low = f.lower()
            if low.endswith(exts) or low in names:
                out.append(os.path.join(dp, f))
    return tuple(sorted(out))


def corpus_sources() -> dict:
    """Where `default_corpus` looks, per domain: {domain: [(label, function returning paths or None)]}."""
    import site
    std = str(_stdlib())
    roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    roots = [r for r in roots if not r.startswith(std + os.sep)]
    doc = "/usr/share/doc"
    skip = ("test", "tests", "idle_test", "site-packages", "pydoc_data", "lib2to3", "dist-packages")

    def stdlib_code():
        return list(_walk(std, (".py",), (), skip))

    def markup_files():
        exts = (".html", ".htm", ".md", ".rst")
        return [p for r in [os.path.join(std, "idlelib"), doc] + roots if os.path.isdir(r) for p in _walk(r, exts)]

    def prose_files():
        names = ("readme", "news", "changelog", "authors")
        out = []
        for r in [std, doc] + roots:
            if os.path.isdir(r):
                out += [p for p in _walk(r, (".txt",), names, skip)
                        if "licen" not in os.path.basename(p).lower() and "copying" not in p.lower()
                        and ".dist-info" not in p and ".egg-info" not in p]
        return out
    return {"code": [("Python stdlib source (no tests)", stdlib_code)],
            "markup": [("HTML / Markdown / RST docs (idlelib, /usr/share/doc, site-packages)", markup_files)],
            "prose": [("pydoc_data.topics (the Python reference manual as plain text)", None),
                      ("plain-text docs (*.txt, README, NEWS) in the stdlib, /usr/share/doc, site-packages",
                       prose_files)]}


def default_corpus(bytes_per_domain: int = 200_000, max_doc_bytes: int = 16_000, seed: int = 0,
                   min_english: float = 0.2, domains=DOMAINS, progress: bool = False) -> list[Document]:
    """Prose, code and markup from text that ships with this machine (no downloads): Python's own
    stdlib source (code); HTML / Markdown / RST files in idlelib, /usr/share/doc and site-packages
    (markup); the plain-text Python reference manual (``pydoc_data.topics``) and plain-text docs
    (prose). Per domain, documents are drawn in a seeded random order from the sorted candidate
    list until ``bytes_per_domain`` is reached; each is cut to ``max_doc_bytes`` at a line boundary;
    duplicates (same content) are dropped; prose and markup must look English (a function-word
    share of at least ``min_english``)."""
    rng = np.random.default_rng(seed)
    src = corpus_sources()
    docs: list[Document] = []
    seen: set = set()
    for dom in domains:
        cands: list = []     # (doc_id, path, text-or-None)
        for label, fn in src[dom]:
            if fn is None:   # pydoc topics
                try:
                    from pydoc_data.topics import topics
                except ImportError:
                    continue
                cands += [(f"pydoc_data.topics:{k}", f"pydoc_data/topics.py:{k}", v) for k, v in sorted(topics.items())]
            else:
                cands += [(p, p, None) for p in fn() if not os.path.islink(p)]
        order = rng.permutation(len(cands))
        total = 0
        for j in order:
            if total >= bytes_per_domain:
                break
            doc_id, path, text = cands[j]
            if text is None:
                text = _read(Path(path), max_doc_bytes)
            elif len(text) > max_doc_bytes:
                cut = text.rfind("\n", 0, max_doc_bytes)
                text = text[: cut + 1 if cut > max_doc_bytes // 2 else max_doc_bytes]
            if not text or len(text.strip()) < 200:
                continue
            h = hashlib.sha1(text.encode()).hexdigest()
            if h in seen:
                continue
            if dom != "code" and english_score(text) < min_english:
                continue
            seen.add(h)
            d = Document(doc_id, dom, text, path)
            docs.append(d)
            total += d.n_bytes
    return docs


def user_corpus(specs, max_doc_bytes: int = 1_000_000) -> list[Document]:
    """Documents from files or directories; ``domain:path`` fixes the domain, else it follows the
    file extension (code / markup extensions, everything else prose)."""
    docs = []
    for spec in specs:
        dom, _, p = spec.partition(":") if spec.split(":", 1)[0] in DOMAINS else ("", "", spec)
        path = Path(p)
        if not path.exists():
            raise InterpError(f"corpus path '{p}' not found")
        files = sorted(x for x in path.rglob("*") if x.is_file()) if path.is_dir() else [path]
        for f in files:
            text = _read(f, max_doc_bytes)
            if text and text.strip():
                docs.append(Document(str(f), dom or domain_of(str(f)), text, str(f)))
    if not docs:
        raise InterpError(f"no readable UTF-8 text in corpus {list(specs)}")
    return docs


def split_docs(docs: list[Document], eval_bytes: int) -> tuple[list[Document], list[Document]]:
    """(train, eval): per domain, the first documents (in corpus order) up to ``eval_bytes`` are
    held out for evaluation."""
    train, ev = [], []
    used = dict.fromkeys(DOMAINS, 0)
    for d in docs:
        if used[d.domain] < eval_bytes:
            ev.append(d)
            used[d.domain] += d.n_bytes
        else:
            train.append(d)
    return train, ev


def corpus_table(docs: list[Document], split: str = "") -> pd.DataFrame:
    return pd.DataFrame([dict(split=split, domain=d.domain, doc_id=d.doc_id, bytes=d.n_bytes,
                              sha1=hashlib.sha1(d.text.encode()).hexdigest()[:10]) for d in docs])


# --- models and tokenizers ----------------------------------------------------------------------

def load_tokenizer(spec: str):
    """The tokenizer of a local HF checkpoint directory (no downloads)."""
    p = Path(spec)
    if not p.is_dir():
        raise InterpError(f"'{spec}' is not a checkpoint directory; the corpus analysis needs local HF "
                          "checkpoints with their tokenizer")
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise InterpError(f"no tokenizer in '{spec}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the "
                          "corpus analysis needs a tokenizer saved with the checkpoint") from None


def same_tokenizer(tok_a, tok_b) -> bool:
    return tok_a.get_vocab() == tok_b.get_vocab()


def _logits(model, ids):
    from interp.zoo import HybridLM
    if isinstance(model, HybridLM):
        return model(ids)
    return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def token_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B, T-1] -log p(ids[:, t+1] | ids[:, :t+1]) in float32."""
    dev = next(model.parameters()).device
    ids = ids.to(dev)
    logits = _logits(model, ids)[:, :-1].float()
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1).cpu()


def windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over n tokens: (begin, end, first scored target); targets in
    [first, end) are scored in this window (position 0 is never a target)."""
    out, prev_end, begin = [], 1, 0
    while True:
        end = min(begin + seq_len, n)
        if end > prev_end:
            out.append((begin, end, prev_end))
        prev_end = max(prev_end, end)
        if end >= n:
            return out
        begin += stride


# --- the comparison -----------------------------------------------------------------------------

class TokenLosses(pd.DataFrame):
    """One row per scored token: doc_id, domain, window, pos, token (its text), token_id, ctx (context
    tokens it sees), tag, piece, copy_len, copy_dist, prev_dist, delim, delim_span, loss_a, loss_b,
    diff (= loss_a - loss_b, > 0 where model B predicts the token better). ``attrs['models']`` =
    [name_a, name_b]. `stratify` and `plot` summarise it."""

    _metadata = []

    @property
    def _constructor(self):
        return TokenLosses

    @property
    def names(self) -> list[str]:
        return list(self.attrs.get("models", ["A", "B"]))

    def stratify(self, facets=None, n_boot: int = 1000, seed: int = 0, min_n: int = 1) -> pd.DataFrame:
        """Mean loss of each model and mean difference per (facet, category, domain), domain 'all'
        included, with 95% cluster-bootstrap intervals (clusters: context windows)."""
        return stratify(self, facets=facets, n_boot=n_boot, seed=seed, min_n=min_n)

    def plot(self, path=None, summary=None, title=None, value: str = "diff"):  # noqa: D102 - on the class
        return plot_summary(self.stratify() if summary is None else summary, self.names, path, title, value)


COPY_BINS = [(0, 0, "new"), (1, 1, "1"), (2, 3, "2-3"), (4, 7, "4-7"), (8, 15, "8-15"), (16, 10**9, "16+")]
DIST_BINS = [(1, 16, "1-16"), (17, 64, "17-64"), (65, 256, "65-256"), (257, 1024, "257-1k"), (1025, 10**9, ">1k")]
SPAN_BINS = [(1, 4, "1-4"), (5, 16, "5-16"), (17, 64, "17-64"), (65, 10**9, "65+")]
COPY_MIN = 4   # the copy-distance facet looks at tokens inside a repeated n-gram of at least this length


def _bucket(x: pd.Series, bins) -> pd.Series:
    out = pd.Series(pd.NA, index=x.index, dtype=object)
    for lo, hi, lab in bins:
        out[(x >= lo) & (x <= hi)] = lab
    return out


def facet_columns(df: pd.DataFrame) -> dict:
    """{facet: (category per row or NA, ordered categories)}."""
    tags = [t for t in TAGS if t != "other"]
    closers = df["delim"].where(df["delim"].astype(str).str.startswith("close") & (df["delim_span"] > 0))
    return {
        "tag": (df["tag"].where(df["tag"] != "other"), tags),
        "copy n-gram length": (_bucket(df["copy_len"], COPY_BINS), [b[2] for b in COPY_BINS]),
        f"copy distance (n-gram >= {COPY_MIN})": (_bucket(df["copy_dist"].where(df["copy_len"] >= COPY_MIN, -1),
                                                           DIST_BINS), [b[2] for b in DIST_BINS]),
        "delimiter": (df["delim"].where(df["delim"] != "none"), [d for d in DELIMS if d != "none"]),
        "closing delimiter span": (_bucket(df["delim_span"].where(closers.notna(), -1), SPAN_BINS),
                                   [b[2] for b in SPAN_BINS]),
    }


def _boot_ci(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng) -> tuple[float, float]:
    """95% percentile interval of the ratio sum/count under resampling clusters with replacement."""
    C = len(sums)
    if C < 2:
        return float("nan"), float("nan")
    w = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float)
    means = (w @ sums) / np.maximum(w @ counts, 1e-12)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


MIN_CLUSTERS = 5   # a category needs tokens in at least this many context windows for a bootstrap interval


def stratify(df: pd.DataFrame, facets=None, n_boot: int = 1000, seed: int = 0, min_n: int = 1) -> pd.DataFrame:
    """Per (facet, category, domain; domain ``all`` pools them): token count ``n``, the number of
    context windows holding such tokens (``clusters``), both models' mean loss, the mean
    difference ``diff`` and ``excess`` = diff minus the domain's mean difference over all its
    tokens (> 0: model B's advantage is larger on this category than on the domain's average
    token), each with a 95% cluster-bootstrap interval (``ci_lo``/``ci_hi``,
    ``excess_lo``/``excess_hi``): the domain's context windows are resampled with replacement,
    the same draws for every category, and each mean is the ratio of resampled sums. A category
    found in fewer than `MIN_CLUSTERS` windows gets no interval (NaN)."""
    cols = facet_columns(df)
    facets = list(cols) if facets is None else list(facets)
    bad = [f for f in facets if f not in cols]
    if bad:
        raise InterpError(f"facet '{bad[0]}' is not valid; valid: {', '.join(cols)}")
    cluster = pd.factorize(df["doc_id"].astype(str) + "#" + df["window"].astype(str))[0]
    diff, la, lb = (df[c].to_numpy(float) for c in ("diff", "loss_a", "loss_b"))
    domain = df["domain"].to_numpy()
    doms = [d for d in DOMAINS if d in set(domain)] + ["all"]
    per_dom = {}
    for k, dom in enumerate(doms):
        in_dom = np.ones(len(df), bool) if dom == "all" else domain == dom
        _, inv = np.unique(cluster[in_dom], return_inverse=True)
        C = int(inv.max()) + 1 if len(inv) else 0
        rng = np.random.default_rng([seed, k])
        W = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float) if C >= 2 else None
        base_sum = np.bincount(inv, weights=diff[in_dom], minlength=C)
        base_cnt = np.bincount(inv, minlength=C).astype(float)
        base_boot = (W @ base_sum) / (W @ base_cnt) if W is not None else None
        per_dom[dom] = (in_dom, inv, C, W, float(diff[in_dom].mean()) if in_dom.any() else np.nan, base_boot)

    def interval(x):
        x = x[np.isfinite(x)]
        if len(x) < max(10, n_boot // 2):
            return float("nan"), float("nan")
        lo, hi = np.percentile(x, [2.5, 97.5])
        return float(lo), float(hi)
    rows = []
    for f in facets:
        cat, order = cols[f]
        cat = cat.astype(object).where(cat.notna(), "").to_numpy()
        for dom in doms:
            in_dom, inv, C, W, base, base_boot = per_dom[dom]
            cat_d, diff_d = cat[in_dom], diff[in_dom]
            for c in order:
                sel = cat_d == c
                n = int(sel.sum())
                if n < min_n or n == 0:
                    continue
                sums = np.bincount(inv[sel], weights=diff_d[sel], minlength=C)
                counts = np.bincount(inv[sel], minlength=C).astype(float)
                lo = hi = elo = ehi = float("nan")
                if W is not None and (counts > 0).sum() >= MIN_CLUSTERS:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        boot = (W @ sums) / (W @ counts)
                    lo, hi = interval(boot)
                    elo, ehi = interval(boot - base_boot)
                m = diff_d[sel].mean()
                rows.append(dict(facet=f, category=c, domain=dom, n=n, clusters=int((counts > 0).sum()),
                                 loss_a=la[in_dom][sel].mean(), loss_b=lb[in_dom][sel].mean(), diff=m, ci_lo=lo,
                                 ci_hi=hi, excess=m - base, excess_lo=elo, excess_hi=ehi))
    return pd.DataFrame(rows)


def plot_summary(summary: pd.DataFrame, names, path=None, title=None, value: str = "diff"):
    """Bars of the mean loss difference per category (one panel per facet, one colour per domain),
    with the 95% intervals; ``value="excess"``: the difference minus the domain's mean difference."""
    if value not in ("diff", "excess"):
        raise InterpError(f"value '{value}' is not valid; valid: diff, excess")
    lo_col, hi_col = ("ci_lo", "ci_hi") if value == "diff" else ("excess_lo", "excess_hi")
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    facets = list(dict.fromkeys(summary["facet"]))
    doms = [d for d in list(DOMAINS) + ["all"] if d in set(summary["domain"])]
    colors = {"prose": "C0", "code": "C1", "markup": "C2", "all": "0.35"}
    fig, axes = plt.subplots(len(facets), 1, figsize=(10, 2.9 * len(facets)), squeeze=False)
    width = 0.8 / max(len(doms), 1)
    for ax, f in zip(axes[:, 0], facets):
        sub = summary[summary.facet == f]
        cats = list(dict.fromkeys(sub["category"]))
        for k, dom in enumerate(doms):
            g = sub[sub.domain == dom].set_index("category").reindex(cats)
            x = np.arange(len(cats)) + (k - (len(doms) - 1) / 2) * width
            err = np.vstack([g[value] - g[lo_col], g[hi_col] - g[value]])
            ax.bar(x, g[value], width, color=colors.get(dom), label=dom,
                   yerr=np.where(np.isnan(err), 0, err), capsize=2, error_kw={"lw": 0.8})
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xticks(range(len(cats)), [f"{c}\n(n={int(sub[(sub.category == c) & (sub.domain == 'all')].n.sum())})"
                                         if "all" in doms else c for c in cats], fontsize=7)
        ax.set_title(f, fontsize=10, loc="left")
        ax.set_ylabel(f"loss({names[0]}) - loss({names[1]})" + ("\nminus domain mean" if value == "excess" else ""),
                      fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=len(doms), loc="upper right")
    fig.suptitle(title or (f"Per-token loss difference (> 0: {names[1]} better), mean with 95% bootstrap CI"
                           if value == "diff" else f"Loss difference minus the domain's mean difference (> 0: "
                           f"{names[1]}'s advantage larger than average), 95% bootstrap CI"),
                 fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def _encode(tokenizer, text: str):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], np.int64)
    offs = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    return ids, offs


def _doc_windows(doc: Document, tokenizer, seq_len: int, stride: int, max_tokens: int | None):
    """(ids with BOS, offsets with BOS, features, windows) of one document."""
    ids, offs = _encode(tokenizer, doc.text)
    if max_tokens:
        ids, offs = ids[:max_tokens], offs[:max_tokens]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = np.concatenate([[bos], ids])
        offs = np.concatenate([[[0, 0]], offs])
    feats = token_features(annotate(doc.text, doc.domain, doc.path), offs)
    return ids, offs, feats, windows(len(ids), seq_len, stride)


def compare(models: dict, tokenizer, docs: list[Document], seq_len: int = 512, stride: int | None = None,
            batch_size: int = 8, out=None, progress: bool = True, max_tokens_per_doc: int | None = None,
            unit_windows: int = 64) -> TokenLosses:
    """Per-token losses of the two ``models`` ({name_a: model_a, name_b: model_b}, same tokenizer)
    on ``docs``. ``out``: a directory for finished units (groups of documents, parquet), so an
    interrupted call resumes; the same arguments must be given again."""
    if len(models) != 2:
        raise InterpError(f"compare takes exactly two models, got {len(models)}: {list(models)}")
    stride = stride or max(1, seq_len // 2)
    if not 1 <= stride <= seq_len:
        raise InterpError(f"stride {stride} is out of range; valid: 1..seq_len ({seq_len})")
    if seq_len < 2:
        raise InterpError(f"seq_len {seq_len} is out of range; valid: >= 2")
    (na, ma), (nb, mb) = models.items()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # units: consecutive documents holding about unit_windows windows
    units, cur, nw = [], [], 0
    prepared = {}
    for d in docs:
        prepared[d.doc_id] = None
        cur.append(d)
        nw += max(1, (len(d.text) // 3) // stride)
        if nw >= unit_windows:
            units.append(cur)
            cur, nw = [], 0
    if cur:
        units.append(cur)
    spec = json.dumps([na, nb, seq_len, stride, max_tokens_per_doc, len(tokenizer)])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm
    frames = []
    for ui, unit in enumerate(tqdm(units, desc=f"token losses {na} vs {nb}", disable=not progress,
                                   dynamic_ncols=True)):
        key = hashlib.sha1((spec + "".join(d.doc_id + hashlib.sha1(d.text.encode()).hexdigest()
                                           for d in unit)).encode()).hexdigest()[:12]
        f = out / f"unit{ui:05d}_{key}.parquet" if out is not None else None
        if f is not None and f.is_file():
            frames.append(pd.read_parquet(f))
            continue
        frames.append(_unit(unit, tokenizer, ma, mb, seq_len, stride, batch_size, pad, max_tokens_per_doc))
        if f is not None:
            tmp = f.with_suffix(".tmp")
            frames[-1].to_parquet(tmp, index=False)
            tmp.rename(f)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    res = TokenLosses(df)
    res.attrs["models"] = [na, nb]
    res.attrs["seq_len"], res.attrs["stride"] = seq_len, stride
    return res


def _unit(unit, tokenizer, ma, mb, seq_len, stride, batch_size, pad, max_tokens):
    jobs = []   # (doc, ids, offs, feats, window index, begin, end, first)
    for d in unit:
        ids, offs, feats, wins = _doc_windows(d, tokenizer, seq_len, stride, max_tokens)
        for w, (b, e, first) in enumerate(wins):
            jobs.append((d, ids, offs, feats, w, b, e, first))
    cols: dict = {k: [] for k in ("doc_id", "domain", "window", "pos", "token", "token_id", "ctx", "tag", "piece",
                                  "copy_len", "copy_dist", "prev_dist", "delim", "delim_span", "loss_a", "loss_b")}
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        L = max(e - b for _, _, _, _, _, b, e, _ in chunk)
        x = torch.full((len(chunk), L), pad, dtype=torch.long)
        for i, (_, ids, _, _, _, b, e, _) in enumerate(chunk):
            x[i, :e - b] = torch.from_numpy(ids[b:e])
        la, lb = token_nll(ma, x).numpy(), token_nll(mb, x).numpy()
        for i, (d, ids, offs, feats, w, b, e, first) in enumerate(chunk):
            cf = copy_features(ids[b:e])
            t = np.arange(first, e)           # doc positions scored here
            loc = t - b                       # window positions
            n = len(t)
            cols["doc_id"].append(np.full(n, d.doc_id, dtype=object))
            cols["domain"].append(np.full(n, d.domain, dtype=object))
            cols["window"].append(np.full(n, w))
            cols["pos"].append(t)
            cols["token"].append(np.array([d.text[o0:o1] for o0, o1 in offs[t]], dtype=object))
            cols["token_id"].append(ids[t])
            cols["ctx"].append(loc)
            for k in ("tag", "piece", "delim", "delim_span"):
                cols[k].append(feats[k][t])
            for k in ("copy_len", "copy_dist", "prev_dist"):
                cols[k].append(cf[k][loc])
            cols["loss_a"].append(la[i, loc - 1])
            cols["loss_b"].append(lb[i, loc - 1])
    if not jobs:
        return pd.DataFrame(columns=list(cols) + ["diff"])
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    df["diff"] = df["loss_a"] - df["loss_b"]
    return df


# --- synthetic probes ----------------------------------------------------------------------------

PROBE_TASKS = ("pronoun", "entity_tracking", "brackets")


@torch.no_grad()
def task_losses(models: dict, task: str, n: int = 128, seed: int = 123, knobs=None, grid=None,
                progress: bool = False) -> pd.DataFrame:
    """Per-token losses of zoo ``models`` on a synthetic task, one knob moved at a time over its
    difficulty grid (or ``grid`` {knob: values}; ``knobs`` restricts which). Rows: model, task,
    knob, value, example, position, role, loss, cand_loss, correct. Roles: ``answer`` (the
    supervised answer) and, for brackets, ``close`` (every in-sequence position whose next token
    is a closing bracket). ``cand_loss`` renormalises over the role's candidates only (colours,
    boxes, closing brackets), so it measures the choice among them; ``correct``: argmax over the
    candidates is right."""
    from interp import tasks as T
    from interp.tasks.vocab import BOXES, CLOSE, COLORS, VOCAB
    cands = {"pronoun": COLORS, "entity_tracking": BOXES, "brackets": CLOSE}
    if task not in cands:
        raise InterpError(f"task '{task}' has no probe roles; valid: {', '.join(cands)}")
    cand = torch.tensor(VOCAB.encode(list(cands[task])))
    close_ids = torch.tensor(VOCAB.encode(list(CLOSE)))
    full = grid or T.difficulty_grid(task)
    if knobs:
        bad = [k for k in knobs if k not in full]
        if bad:
            raise InterpError(f"unknown knob '{bad[0]}' for task '{task}'; valid knobs: {', '.join(full)}")
        full = {k: full[k] for k in knobs}
    jobs = [(k, v) for k, vs in full.items() for v in vs]
    from tqdm.auto import tqdm
    rows = []
    for knob, v in tqdm(jobs, desc=f"probe {task}", disable=not progress, dynamic_ncols=True):
        b = T.generate(task, n, seed=seed, **{knob: v})
        tok = b.tokens
        tgt = tok[:, 1:]
        ex_a, pos_a = (b.answer_pos >= 0).nonzero(as_tuple=True)
        ans = (ex_a, b.answer_pos[ex_a, pos_a])
        roles = [("answer", ans)]
        if task == "brackets":
            m = torch.isin(tgt, close_ids)
            m[ans] = False
            roles.append(("close", m.nonzero(as_tuple=True)))
        for name, model in models.items():
            logits = _logits(model, tok.to(model.device)).float().cpu()[:, :-1]
            logp = logits.log_softmax(-1)
            for role, (ei, pi) in roles:
                y = tgt[ei, pi]
                lp = logp[ei, pi]
                cl = lp[:, cand].log_softmax(-1)
                yi = (cand[None, :] == y[:, None]).float().argmax(-1)
                rows.append(pd.DataFrame({
                    "model": name, "task": task, "knob": knob, "value": str(v), "example": ei.numpy(),
                    "position": pi.numpy(), "role": role, "loss": (-lp.gather(1, y[:, None])[:, 0]).numpy(),
                    "cand_loss": (-cl.gather(1, yi[:, None])[:, 0]).numpy(),
                    "correct": (cl.argmax(-1) == yi).numpy()}))
    return pd.concat(rows, ignore_index=True)


def paired_summary(df: pd.DataFrame, ref: str, n_boot: int = 1000, seed: int = 0,
                   by=("task", "role", "knob", "value")) -> pd.DataFrame:
    """Per (model != ref, task, role, knob, value): mean loss / cand_loss / accuracy of both and the
    paired difference ``diff = loss(ref) - loss(model)`` (> 0: the model beats ``ref``) with a 95%
    bootstrap interval over examples."""
    rng = np.random.default_rng(seed)
    by = list(by)
    keys = by + ["example", "position"]
    r = df[df.model == ref].set_index(keys)
    rows = []
    for m in [x for x in dict.fromkeys(df.model) if x != ref]:
        o = df[df.model == m].set_index(keys)
        j = r.merge(o, left_index=True, right_index=True, suffixes=("_ref", "_m"), how="inner").reset_index()
        j["diff"] = j["cand_loss_ref"] - j["cand_loss_m"]
        for k, g in j.groupby(by, sort=False):
            agg = g.groupby("example")["diff"].agg(["sum", "count"])
            lo, hi = _boot_ci(agg["sum"].to_numpy(float), agg["count"].to_numpy(float), n_boot, rng)
            rows.append({**dict(zip(by, k)), "model": m, "ref": ref, "n": len(g),
                         "cand_loss_ref": g["cand_loss_ref"].mean(), "cand_loss_model": g["cand_loss_m"].mean(),
                         "acc_ref": g["correct_ref"].mean(), "acc_model": g["correct_m"].mean(),
                         "diff": g["diff"].mean(), "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows)


__all__ = ["FUNCTION_WORDS", "TAGS", "DELIMS", "DOMAINS", "Document", "TokenLosses", "annotate", "token_features",
           "copy_features", "default_corpus", "user_corpus", "split_docs", "corpus_table", "compare", "stratify",
           "plot_summary", "token_nll", "windows", "load_tokenizer", "same_tokenizer", "task_losses",
           "paired_summary", "PROBE_TASKS"]
