"""Options and helpers the `interp` commands share: the --model/--knob/--n/--seed/--device options,
the scale-out options of capture and patch, KNOB=VALUE and position parsing, and model loading.
(--task and --out differ in every command: default, repeatable or required; each command defines its own.)"""
from __future__ import annotations

import json

from interp import InterpError

MODEL_HELP = "default model name, zoo dir or local HF checkpoint dir"


def add_model(p):
    """--model for the commands that take one model (capture, patch)."""
    p.add_argument("--model", default="gdn75", help=MODEL_HELP)


def add_knob(p, help="task knob KNOB=VALUE (repeatable)"):
    p.add_argument("--knob", action="append", default=None, help=help)


def add_n(p, default: int, help=None):
    p.add_argument("--n", type=int, default=default, help=help)


def add_seed(p, default: int = 0):
    p.add_argument("--seed", type=int, default=default)


def add_device(p, default: str = "cpu", help=None):
    p.add_argument("--device", default=default, help=help)


def scale_args(parser):
    parser.add_argument("--distributed", action="store_true", help="data-parallel over the processes torchrun "
                        "starts: torchrun --nproc-per-node 2 -m interp.cli -- <command> ... --distributed (rank 0 merges)")
    parser.add_argument("--device-map", default=None, help="spread a local HF checkpoint over this host's GPUs: "
                        "auto, balanced, balanced_low_0 or sequential (needs accelerate)")
    parser.add_argument("--gpu-memory", default=None, help="with --device-map: cap per device, e.g. 40GiB "
                        "(every GPU) or 0=40GiB,1=70GiB,cpu=100GiB")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def kv(items) -> dict:
    """['n_pairs=8', 'group=S5'] -> {'n_pairs': 8, 'group': 'S5'} (values read as JSON where they parse)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise InterpError(f"expected KNOB=VALUE, got '{it}'")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def positions(spec, what="--positions"):
    """'all' -> None; '3,5,9' or '0:30' (python slice, end exclusive) or a mix -> list of ints."""
    if spec is None or spec == "all":
        return None
    out = []
    for part in spec.split(","):
        try:
            if ":" in part:
                a, b = part.split(":")
                out += list(range(int(a), int(b)))
            else:
                out.append(int(part))
        except ValueError:
            raise InterpError(f"{what} '{spec}' is not valid; valid: all, 3,5,9 or 0:30") from None
    return out


def load_any(spec, device="cpu"):
    """The model alone (no kind) of `interp.models.load_any`."""
    from interp.models import load_any as load
    return load(spec, device=device)[0]


def load_scaled(a):
    """(model, kind, ctx) for capture / patch: ``--distributed`` joins the torchrun process group
    (one model copy per rank; --device cuda -> cuda:<local rank>); ``--device-map`` spreads one
    model over the GPUs of this host (``--gpu-memory`` caps each device); ``--dtype``."""
    from interp.models import load_any as load
    device, ctx = a.device, None
    if a.distributed:
        if a.device_map:
            raise InterpError("--distributed and --device-map together are not supported: each process would "
                              "spread its model over every GPU; use one of them")
        from interp import distributed
        ctx = distributed.init()
        device = ctx.device(a.device)
    model, kind = load(a.model, device=device, dtype=a.dtype, device_map=a.device_map,
                       max_memory=a.gpu_memory)
    return model, kind, ctx
