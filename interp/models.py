"""Load a model by name or path: a shipped default (`gdn75`), a zoo directory, or a local HF
checkpoint directory (no hub downloads); with it the parsers of the placement options it takes
(dtype, memory sizes, per-device memory caps)."""
from __future__ import annotations

import json
from pathlib import Path

from interp import InterpError


DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_dtype(s):
    """'bfloat16' -> torch.bfloat16 (None stays None)."""
    import torch
    if s is None or isinstance(s, torch.dtype):
        return s
    if s not in DTYPES:
        raise InterpError(f"dtype '{s}' is not valid; valid: {', '.join(DTYPES)}")
    return getattr(torch, s)


def parse_size(s) -> int:
    """A memory size -> bytes: '512MB', '2GiB', '1e9' or a number (binary units: 1GB = 2**30)."""
    if isinstance(s, (int, float)):
        return int(s)
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = str(s).strip().lower().rstrip("ib").rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(float(t))
    except (ValueError, KeyError):
        raise InterpError(f"invalid memory size '{s}'; examples: 512MB, 2GB, 1e9") from None


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

    ``device_map`` (local HF checkpoints only; needs `accelerate`): 'auto' (also 'balanced',
    'balanced_low_0', 'sequential' or an explicit {module: device} dict) spreads the layers over
    the GPUs of this host (then the CPU); ``max_memory`` ({0: '20GiB', 'cpu': '64GiB'} or the
    string form of `parse_max_memory`) caps what each device gets, e.g. to force a split.
    ``device`` is ignored when ``device_map`` is given; hooks move tensors between the devices."""
    from interp.demo import DEFAULTS_DIR, default_model_path
    from interp.zoo import load_model
    dtype = parse_dtype(dtype)
    if device_map is not None and not isinstance(device_map, dict) and device_map not in DEVICE_MAPS:
        raise InterpError(f"device map '{device_map}' is not valid; valid: {', '.join(DEVICE_MAPS)} "
                          "or a {module: device} dict")
    if max_memory is not None and device_map is None:
        raise InterpError("max memory per device applies only with a device map (e.g. device_map='auto')")
    p = Path(spec)
    if not p.exists():
        if "/" not in spec and (DEFAULTS_DIR / spec).is_dir():
            _no_zoo_map(spec, device_map)
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
        if device_map is None:
            m = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True,
                                                     dtype=dtype or torch.float32).to(device).eval()
            return m, "hf"
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise InterpError("device_map needs the 'accelerate' package: pip install accelerate "
                              "(or pip install -e '.[shard]')") from None
        m = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=dtype or torch.float32,
                                                 device_map=device_map, max_memory=parse_max_memory(max_memory))
        return m.eval(), "hf"
    _no_zoo_map(spec, device_map)
    return load_model(p, device=device, dtype=dtype), "zoo"


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
