"""Load a model by name or path: a shipped default (`gdn75`), a zoo directory, a local HF
checkpoint directory or, where the machine reaches the Hugging Face hub, a hub model name; with it
the parsers and checks of the placement options it takes (device, dtype, memory sizes,
per-device memory caps) and the reader of `interp capture --text` files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from interp import InterpError
from interp.devices import check_device  # noqa: F401 - re-exported (interp.models.check_device)


DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_dtype(s):
    """'bfloat16' -> torch.bfloat16 (None stays None; a floating torch dtype, float64 included, as it is)."""
    import torch
    if s is None or isinstance(s, torch.dtype) and s.is_floating_point:
        return s
    if s not in DTYPES:
        raise InterpError(f"dtype '{s}' is not valid; valid: {', '.join(DTYPES)} or a floating torch dtype")
    return getattr(torch, s)


def parse_size(s) -> int:
    """A memory size -> bytes: '512MB', '2GiB', '1e9' or a number (binary units: 1GB = 2**30);
    finite and >= 0."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = str(s).strip().lower().rstrip("ib").rstrip("b")
    try:
        v = float(s) if isinstance(s, (int, float)) else (
            float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t))
    except (ValueError, KeyError):
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise InterpError(f"invalid memory size '{s}'; valid: a finite size >= 0 such as 512MB, 2GB, 1e9")
    return int(v)


def parse_max_memory(spec):
    """Per-device memory caps for ``device_map`` placement: '20GiB' (every GPU) or
    '0=20GiB,1=30GiB,cpu=64GiB' -> {0: '20GiB', 1: '30GiB', 'cpu': '64GiB'} (None stays None)."""
    if spec is None or isinstance(spec, dict):
        return spec
    out = {}
    for part in str(spec).split(","):
        dev, _, size = part.rpartition("=")
        parse_size(size)  # validates the size
        if not dev:
            import torch
            n = torch.cuda.device_count()
            if n == 0:
                raise InterpError(f"max memory '{spec}' without a device needs GPUs; name devices, e.g. cpu={size}")
            out.update({i: size for i in range(n)})
        elif dev.isdigit():
            out[int(dev)] = size
        elif dev in ("cpu", "disk"):
            out[dev] = size
        else:
            raise InterpError(f"max memory device '{dev}' is not valid; valid: a GPU index (0, 1, ...), cpu, disk")
    return out


def load_any(spec: str, device="cpu", dtype=None, device_map=None, max_memory=None):
    """Returns (model, kind) with kind 'zoo' or 'hf'.

    ``spec``: a shipped default name (transformer, gdn75, gdn100), a zoo model directory, a local
    HF checkpoint directory, or else a Hugging Face hub model name (downloaded where the hub is
    reachable and ``HF_HUB_OFFLINE`` is not set; otherwise an InterpError says to pass a local path).
    ``device_map`` (HF checkpoints only; needs `accelerate`): 'auto' (also 'balanced',
    'balanced_low_0', 'sequential' or an explicit {module: device} dict) spreads the layers over
    the GPUs of this host (then the CPU); ``max_memory`` ({0: '20GiB', 'cpu': '64GiB'} or the
    string form of `parse_max_memory`) caps what each device gets, e.g. to force a split.
    ``device`` is ignored when ``device_map`` is given; hooks move tensors between the devices."""
    from interp.demo import DEFAULTS_DIR, default_model_path, is_default_name
    from interp.zoo import load_model
    dtype = parse_dtype(dtype)
    if device_map is not None and not isinstance(device_map, dict) and device_map not in DEVICE_MAPS:
        raise InterpError(f"device map '{device_map}' is not valid; valid: {', '.join(DEVICE_MAPS)} "
                          "or a {module: device} dict")
    if max_memory is not None and device_map is None:
        raise InterpError("max memory per device applies only with a device map (e.g. device_map='auto')")
    if device_map is None:
        check_device(device)
    p = Path(spec)
    if not p.exists():
        if is_default_name(spec):
            _no_zoo_map(spec, device_map)
            return load_model(default_model_path(spec), device=device, dtype=dtype), "zoo"
        avail = sorted(d.name for d in DEFAULTS_DIR.iterdir() if d.is_dir()) if DEFAULTS_DIR.is_dir() else []
        _check_hub(spec, avail)
        return _load_hf(spec, device, dtype, device_map, max_memory, local=False), "hf"
    cfgf = p / "config.json"
    if not cfgf.is_file():
        runs = sorted(d.name for d in p.iterdir() if (d / "config.json").is_file()) if p.is_dir() else []
        inside = (f" (it holds the runs {', '.join(runs[:4])}{', ...' if len(runs) > 4 else ''}: name one, e.g. "
                  f"'{p / runs[0]}')" if runs else "")
        raise InterpError(f"no config.json in '{p}'{inside}; valid: a zoo model directory (config.json, "
                          "model.safetensors), a Hugging Face checkpoint directory or a default model name")
    try:
        cfg = json.loads(cfgf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InterpError(f"{cfgf} is not valid JSON ({e}); valid: the config.json of a zoo model or of a "
                          "Hugging Face checkpoint") from None
    if isinstance(cfg, dict) and "model_type" in cfg:  # a Hugging Face checkpoint on local disk
        return _load_hf(str(p), device, dtype, device_map, max_memory, local=True), "hf"
    _no_zoo_map(spec, device_map)
    return load_model(p, device=device, dtype=dtype), "zoo"


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE",
                                                                                      "TRANSFORMERS_OFFLINE"))


def _check_hub(spec: str, avail: list):
    """Return if ``spec`` names a model on a reachable Hugging Face hub; else one InterpError
    saying why not (not a valid hub name, offline, unreachable, no such model)."""
    base = (f"model '{spec}' not found: not a local directory or default model name (valid: "
            f"{', '.join(avail + ['a zoo or Hugging Face model directory'])})")
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise InterpError(base) from None
    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise InterpError(base) from None
    if _hub_offline():
        raise InterpError(f"{base}; no hub access (HF_HUB_OFFLINE is set): pass a local path") from None
    try:
        HfApi().model_info(spec, timeout=10)
    except Exception as e:  # noqa: BLE001 - every failure becomes the one message below
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 404):
            raise InterpError(f"{base}, and no model '{spec}' on the Hugging Face hub") from None
        raise InterpError(f"{base}; no hub access ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                          "pass a local path") from None


def _load_hf(src: str, device, dtype, device_map, max_memory, local: bool):
    """A Hugging Face causal LM from a local directory (``local``) or the hub, in eval mode; a
    checkpoint that does not load is an InterpError naming it."""
    import torch
    from transformers import AutoModelForCausalLM
    kw = dict(local_files_only=local, dtype=dtype or torch.float32)
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise InterpError("device_map needs the 'accelerate' package: pip install accelerate "
                              "(or pip install -e '.[shard]')") from None
        kw.update(device_map=device_map, max_memory=parse_max_memory(max_memory))
    try:
        m = AutoModelForCausalLM.from_pretrained(src, **kw)
    except InterpError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged files, unknown architectures, mismatched weights
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
        raise InterpError(f"cannot load the Hugging Face checkpoint '{src}': {first}") from None
    return (m if device_map is not None else m.to(device)).eval()


def _no_zoo_map(spec, device_map):
    if device_map is not None:
        raise InterpError(f"device_map works with local Hugging Face checkpoints; '{spec}' is a zoo model, "
                          "which loads on one device (use device=, e.g. --device cuda)")


def input_device(model):
    """Where token ids go: the device of the input embedding (for a model spread over devices by
    a device map, the first one; an offloaded embedding ('meta') runs on the CPU)."""
    import torch
    try:
        import hooks
        w = next(hooks.wrap(model).adapter.embed(model).parameters())
    except (TypeError, StopIteration, NotImplementedError):
        w = next(model.parameters(), None)
    if w is None:
        return torch.device("cpu")
    return torch.device("cpu") if w.device.type == "meta" else w.device


def device_summary(model) -> dict:
    """{device: number of parameters} (a sharded model shows every device it uses)."""
    out = {}
    for prm in model.parameters():
        out[str(prm.device)] = out.get(str(prm.device), 0) + prm.numel()
    return out


def read_text(path) -> str:
    """The UTF-8 text of ``path`` (`interp capture --text`); a missing, unreadable or binary file is
    an InterpError naming it."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as e:
        raise InterpError(f"--text '{path}' is not UTF-8 text ({e.reason} at byte {e.start}); valid: a UTF-8 "
                          "text file") from None
    except OSError as e:
        raise InterpError(f"--text '{path}' cannot be read ({e.strerror}); valid: a readable UTF-8 text "
                          "file") from None
    if "\x00" in text:
        raise InterpError(f"--text '{path}' holds NUL bytes (a binary file?); valid: a UTF-8 text file")
    return text


def tokenize_lines(path, model_dir, kind: str, seq_len: int):
    """A text file -> (tokens [N, T], attention_mask [N, T]): one example per non-empty line, cut to its first
    ``seq_len`` tokens and left-padded to the longest (the tokenizer's pad id, else 0; zoo models: the task
    vocabulary's <pad>), for HF and zoo models (both run padded batches as each example alone)."""
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise InterpError(f"--seq-len {seq_len!r} is not valid; valid: integers >= 1")
    # lines end at \n (and \r\n) only, as `wc -l` counts them: str.splitlines also splits at \f, \v, \x85, U+2028
    lines = [ln for ln in read_text(path).split("\n") if ln.strip()]
    if not lines:
        raise InterpError(f"{path}: no non-empty line to capture")
    ids, pad = _encode_lines(lines, model_dir, kind)
    ids = [e[:seq_len] for e in ids]
    from hooks.core import pad_ids
    return pad_ids(ids, pad, side="left")


def _encode_lines(lines, model_dir, kind):
    """(token ids per line, pad id) with the model's tokenizer (zoo: the task vocabulary)."""
    if kind == "zoo":
        from interp.tasks import VOCAB
        bad = sorted({w for ln in lines for w in ln.split() if w not in VOCAB})
        if bad:
            raise InterpError(f"{len(bad)} word(s) not in the zoo vocabulary, e.g. {bad[:5]}; zoo models "
                              "read the task vocabulary only (see interp.tasks.VOCAB)")
        return [VOCAB.encode(ln.split()) for ln in lines], 0
    tok = _hf_tokenizer(model_dir)
    ids = [tok(ln)["input_ids"] for ln in lines]
    _refuse_unknown(tok, ids, [f"line {i + 1}" for i in range(len(ids))])
    return ids, tok.pad_token_id or 0


def _refuse_unknown(tok, ids, where):
    """An InterpError where the tokenizer gave its unknown token (a word it cannot spell): the text would be
    captured with that word replaced by <unk>, as the zoo's vocabulary check refuses too."""
    unk = getattr(tok, "unk_token_id", None)
    if unk is None or unk in {getattr(tok, f"{t}_token_id", None) for t in ("bos", "eos")}:
        return   # none, or one that doubles as a token the tokenizer adds itself (GPT-2's <|endoftext|>); a pad
        # that is the unk token (Llama-style) is no reason to skip: lines are padded after they are encoded
    hits = [w for w, row in zip(where, ids) if unk in row]
    if hits:
        raise InterpError(f"the tokenizer cannot spell some of the text: {tok.unk_token!r} (id {unk}) in "
                          f"{', '.join(hits[:3])}{' ...' if len(hits) > 3 else ''}; valid: text of the "
                          "tokenizer's vocabulary")


def _hf_tokenizer(model_dir):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=Path(model_dir).is_dir())
    except Exception as e:  # noqa: BLE001 - no or damaged tokenizer files
        raise InterpError(f"cannot load the tokenizer of '{model_dir}' for --text: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def tokenize_text(path, model_dir, kind: str, seq_len: int):
    """A text file -> [N, seq_len] token ids (zoo: the task vocabulary, whitespace-split words;
    HF: the checkpoint's tokenizer)."""
    import torch
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise InterpError(f"--seq-len {seq_len!r} is not valid; valid: integers >= 1")
    text = read_text(path)
    if kind == "zoo":
        from interp.tasks import VOCAB
        words = text.split()
        bad = sorted({w for w in words if w not in VOCAB})
        if bad:
            raise InterpError(f"{len(bad)} word(s) not in the zoo vocabulary, e.g. {bad[:5]}; zoo models "
                              "read the task vocabulary only (see interp.tasks.VOCAB)")
        ids = VOCAB.encode(words)
    else:
        tok = _hf_tokenizer(model_dir)
        ids = tok(text)["input_ids"]
        _refuse_unknown(tok, [ids], ["the text"])
    n = len(ids) // seq_len
    if n == 0:
        raise InterpError(f"text has {len(ids)} tokens, fewer than --seq-len {seq_len}")
    if len(ids) % seq_len:
        import warnings
        warnings.warn(f"--text: {len(ids)} tokens make {n} windows of --seq-len {seq_len}; the last "
                      f"{len(ids) % seq_len} tokens are left out (--lines keeps every line whole up to --seq-len)",
                      stacklevel=2)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)
