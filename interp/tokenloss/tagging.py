"""Character-level annotation of one document: word tag families (English lexicon, Python's tokenizer
for code), and brackets, quotes and HTML tags with their openers matched to their closers."""
from __future__ import annotations

import io
import keyword
import re
import tokenize
from dataclasses import dataclass

import numpy as np

from interp import InterpError
from interp.tokenloss.lexicon import DELIM_CODE, DOMAINS, FUNCTION_WORDS, TAG_CODE

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
        return cls(np.full(n, TAG_CODE["punct"], np.int8), np.full(n, -1, np.int64), np.zeros(n, np.int8),
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
            ann.tag[lo + i] = TAG_CODE["space"]
    for m in _WORD.finditer(seg):
        s, e = lo + m.start(), lo + m.end()
        ann.tag[s:e] = TAG_CODE[_word_tag(m.group())]
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
            ann.delim[i] = DELIM_CODE["open_bracket"]
            stacks.setdefault(ch, []).append(i)
        elif ch in _CLOSE:
            ann.delim[i] = DELIM_CODE["close_bracket"]
            st = stacks.get(_OPEN[_CLOSE.index(ch)])
            ann.match[i] = st.pop() if st else -1
        elif ch in "“‘":
            ann.delim[i] = DELIM_CODE["open_quote"]
            stacks.setdefault(ch, []).append(i)
        elif ch in "”’":
            prev, nxt = text[i - 1] if i else " ", text[i + 1] if i + 1 < len(text) else " "
            if ch == "’" and prev.isalnum() and nxt.isalnum():
                continue  # apostrophe
            st = stacks.get("“" if ch == "”" else "‘")
            if ch == "’" and not st:
                continue  # a bare ’ with nothing open is an apostrophe (dogs’)
            ann.delim[i] = DELIM_CODE["close_quote"]
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
                ann.delim[i] = DELIM_CODE["open_quote"]
                st.append(i)
            else:
                ann.delim[i] = DELIM_CODE["close_quote"]
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
            ann.tag[s:e] = TAG_CODE["markup"]
            ann.word[s:e] = -1
            skip[s:e] = True
            if m.group(2) is None or m.group(3) or m.group(2).lower() in _VOID:
                continue   # comment, doctype, self-closing or void element
            name = m.group(2).lower()
            if m.group(1):
                ann.delim[s] = DELIM_CODE["close_tag"]
                j = max((k for k, (n, _) in enumerate(stack) if n == name), default=None)
                if j is not None:
                    ann.match[s] = stack[j][1]
                    del stack[j:]
            else:
                ann.delim[s] = DELIM_CODE["open_tag"]
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
            ann.tag[i] = TAG_CODE["space"]
    for t in toks:
        s, e = off(t.start), off(t.end)
        if t.type == tokenize.NAME:
            ann.tag[s:e] = TAG_CODE["keyword" if keyword.iskeyword(t.string) or keyword.issoftkeyword(t.string)
                                else "identifier"]
            ann.word[s:e] = s
        elif t.type == tokenize.NUMBER:
            ann.tag[s:e] = TAG_CODE["number"]
            ann.word[s:e] = s
        elif t.type == tokenize.OP:
            if t.string in _OPEN:
                ann.delim[s] = DELIM_CODE["open_bracket"]
                brackets.append((t.string, s))
            elif t.string in _CLOSE:
                ann.delim[s] = DELIM_CODE["close_bracket"]
                want = _OPEN[_CLOSE.index(t.string)]
                if brackets and brackets[-1][0] == want:
                    ann.match[s] = brackets.pop()[1]
        elif t.type == tokenize.COMMENT:
            _annotate_text(text, ann, s + 1, e, html=False)
        elif t.type == tokenize.STRING:
            body = t.string.lstrip("rRbBuUfF")
            q = 3 if body[:3] in ('"""', "'''") else 1
            qs = s + len(t.string) - len(body)
            ann.delim[qs] = DELIM_CODE["open_quote"]
            ann.delim[e - q] = DELIM_CODE["close_quote"]
            ann.match[e - q] = qs
            _annotate_text(text, ann, qs + q, e - q, html=False)
        elif t.type == fs_start:
            qs = e - (3 if t.string[-3:] in ('"""', "'''") else 1)
            ann.delim[qs] = DELIM_CODE["open_quote"]
            fstrings.append(qs)
        elif t.type == fs_mid:
            _annotate_text(text, ann, s, e, html=False)
        elif t.type == fs_end:
            ann.delim[s] = DELIM_CODE["close_quote"]
            ann.match[s] = fstrings.pop() if fstrings else -1
    return True


def annotate(text: str, domain: str, path: str = "") -> CharAnn:
    """Character-level tags and delimiters of one document (see the `interp.tokenloss` docstring)."""
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
