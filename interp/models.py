"""Load a model by name or path: a shipped default (`gdn75`), a zoo directory, or a local HF
checkpoint directory (no hub downloads)."""
from __future__ import annotations

import json
from pathlib import Path

from interp import InterpError


def load_any(spec: str, device="cpu", dtype=None):
    """Returns (model, kind) with kind 'zoo' or 'hf'."""
    from interp.demo import DEFAULTS_DIR, default_model_path
    from interp.zoo import load_model
    p = Path(spec)
    if not p.exists():
        if "/" not in spec and (DEFAULTS_DIR / spec).is_dir():
            return load_model(default_model_path(spec), device=device, dtype=dtype), "zoo"
        avail = sorted(d.name for d in DEFAULTS_DIR.iterdir() if d.is_dir()) if DEFAULTS_DIR.is_dir() else []
        raise InterpError(f"model '{spec}' not found: not a directory and not a default model "
                          f"({', '.join(avail)})")
    cfgf = p / "config.json"
    if not cfgf.is_file():
        raise InterpError(f"no config.json in '{p}'")
    cfg = json.loads(cfgf.read_text())
    if "model_type" in cfg:  # a Hugging Face checkpoint on local disk
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True,
                                                 dtype=dtype or torch.float32).to(device).eval()
        return m, "hf"
    return load_model(p, device=device, dtype=dtype), "zoo"


def tokenize_text(path, model_dir, kind: str, seq_len: int):
    """A text file -> [N, seq_len] token ids (zoo: the task vocabulary, whitespace-split words;
    HF: the checkpoint's tokenizer)."""
    import torch
    text = Path(path).read_text()
    if kind == "zoo":
        from interp.tasks import VOCAB
        words = text.split()
        bad = sorted({w for w in words if w not in VOCAB})
        if bad:
            raise InterpError(f"{len(bad)} word(s) not in the zoo vocabulary, e.g. {bad[:5]}; zoo models "
                              "read the task vocabulary only (see interp.tasks.VOCAB)")
        ids = VOCAB.encode(words)
    else:
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)(text)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise InterpError(f"text has {len(ids)} tokens, fewer than --seq-len {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)
