"""The text corpus: documents and their domain, the default corpus assembled from text already on
the machine (no downloads), user corpora from files, the train / eval split and the corpus table."""
from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interp import InterpError
from interp.tokenloss.lexicon import DOMAINS, FUNCTION_WORDS


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
