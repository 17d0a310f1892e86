"""Tokenizers of local HF checkpoints: loading (no downloads), comparing two, and encoding a text with
character offsets."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from interp import InterpError


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


def encode(tokenizer, text: str):
    """(ids [N], character offsets [N, 2]) of ``text``, without special tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], np.int64)
    offs = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
    return ids, offs
