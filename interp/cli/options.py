"""Options and helpers the `interp` commands share: the --model/--knob/--n/--seed/--device options,
the scale-out options of capture and patch, checked number types, KNOB=VALUE and position parsing,
output-path checks, seed lists and model loading.
(--task and --out differ in every command: default, repeatable or required; each command defines its own.)"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from interp import InterpError

MODEL_HELP = "default model name, zoo dir, local HF checkpoint dir or HF hub name (where the hub is reachable)"


def add_model(p):
    """--model for the commands that take one model (capture, patch)."""
    p.add_argument("--model", default="gdn75", help=MODEL_HELP)


def add_knob(p, help="task knob KNOB=VALUE (repeatable)"):
    p.add_argument("--knob", action="append", default=None, help=help)


def add_n(p, default: int | None, help=None):
    p.add_argument("--n", type=int_at_least(1), default=default, help=help or "examples")


def add_seed(p, default: int | None = 0, help="random seed"):
    p.add_argument("--seed", type=int_at_least(0), default=default, help=help)


def add_device(p, default: str = "cpu", help=None):
    p.add_argument("--device", default=default, help=help or "cpu, cuda or cuda:N")


INT_MAX = 2 ** 53   # the largest count, seed or size any option takes (exact in JSON's numbers; torch's seeds,
# a DataLoader's length and C longs overflow far above it)


def once(flag: str, values) -> None:
    """An InterpError naming a value of the repeatable option ``flag`` given twice (it would run twice, or one
    would be silently dropped)."""
    values = list(values or [])
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise InterpError(f"{flag} {twice[0]} is given twice; valid: each {flag} once")


def refuse_unused(mode: str, given, valid: str):
    """An InterpError naming the first option of ``given`` [(flag, value)] that was set (not None) although it does
    not apply to ``mode`` (e.g. --n with --text): an option taken and ignored would be recorded but do nothing."""
    wrong = [flag for flag, value in given if value is not None]
    if wrong:
        raise InterpError(f"{wrong[0]} does not apply to {mode}; valid: {valid}")


def int_at_least(lo: int):
    """An argparse type: an integer >= ``lo`` and <= `INT_MAX` (the error names the value and the valid range)."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not an integer; valid: integers >= {lo}") from None
        if not lo <= v <= INT_MAX:
            raise argparse.ArgumentTypeError(f"{v} is out of range; valid: integers >= {lo} and <= 2**53")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


def finite_float(lo: float = -math.inf, hi: float = math.inf, above: bool = False):
    """An argparse type: a finite number in [lo, hi] (``above``: > lo)."""
    valid = f"finite numbers {'>' if above else '>='} {lo:g}" + ("" if hi == math.inf else f" and <= {hi:g}")

    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not a number; valid: {valid}") from None
        if not (math.isfinite(v) and (v > lo if above else v >= lo) and v <= hi):
            raise argparse.ArgumentTypeError(f"{s} is out of range; valid: {valid}")
        return v
    parse.__name__ = "number"
    return parse


def seed_list(spec, what: str = "--seeds") -> list:
    """Comma-separated seeds: at least one, each a distinct integer >= 0 (a repeated seed would count its run twice)."""
    try:
        seeds = [int(x) for x in str(spec).split(",") if x.strip() != ""]
    except ValueError:
        seeds = None
    if not seeds or min(seeds) < 0 or max(seeds) > INT_MAX or len(set(seeds)) < len(seeds):
        raise InterpError(f"{what} '{spec}' is not valid; valid: distinct comma-separated integers >= 0 and <= 2**53, "
                          "e.g. 0,1,2")
    return seeds


def check_out(path, what: str = "--out", file: bool = False):
    """Refuse an output path that cannot be written, before any work: a file where a directory
    goes (or a directory where a file goes, ``file``), a path below a file, or a non-writable
    place. Nothing is created."""
    if not str(path).strip():
        raise InterpError(f"{what} {str(path)!r} is empty; valid: a path (e.g. runs/x)")
    p = Path(path)
    if p.exists() and p.is_dir() == file:
        want = "a file path (not a directory)" if file else "a directory (new or existing)"
        raise InterpError(f"{what} '{path}' is a {'directory' if p.is_dir() else 'file'}; valid: {want}")
    for up in p.parents:
        if up.exists() and not up.is_dir():
            raise InterpError(f"{what} '{path}' is below the file '{up}'; valid: a path in a directory")
        if up.exists():
            if not os.access(up, os.W_OK | os.X_OK):
                raise InterpError(f"{what} '{path}': '{up}' is not writable; valid: a path in a writable place")
            break


def make_out(path, what: str = "--out") -> Path:
    """`check_out`, then create the output directory (an OSError becomes an InterpError naming it)."""
    check_out(path, what)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InterpError(f"{what} '{path}' cannot be created ({e.strerror}); valid: a path in a writable "
                          "place") from None
    return Path(path)


def scale_args(parser):
    parser.add_argument("--distributed", action="store_true", help="data-parallel over the processes torchrun "
                        "starts: torchrun --nproc-per-node 2 -m interp.cli -- <command> ... --distributed (rank 0 merges)")
    parser.add_argument("--device-map", default=None, help="spread a local HF checkpoint over this host's GPUs: "
                        "auto, balanced, balanced_low_0 or sequential (needs accelerate)")
    parser.add_argument("--gpu-memory", default=None, help="with --device-map: cap per device, e.g. 40GiB "
                        "(every GPU) or 0=40GiB,1=70GiB,cpu=100GiB")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def kv(items) -> dict:
    """['n_pairs=8', 'group=S5'] -> {'n_pairs': 8, 'group': 'S5'} (values read as JSON where they parse); a knob
    given twice is refused (one would be silently dropped)."""
    out, seen = {}, {}
    for it in items or []:
        if "=" not in it:
            raise InterpError(f"--knob '{it}' is not valid; valid: KNOB=VALUE, e.g. n_pairs=8")
        k, v = it.split("=", 1)
        if k in seen:
            raise InterpError(f"--knob {k} is given twice ({seen[k]}, {it}); valid: each knob once")
        seen[k] = it
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


MAX_POSITION = 2 ** 24   # no input of this toolkit is that many tokens long


def positions(spec, what="--positions"):
    """'all' -> None; '3,5,9' or '0:30' (python slice, end exclusive) or a mix -> list of ints."""
    if spec is None or spec == "all":
        return None
    out = []
    for part in spec.split(","):
        try:
            ends = [int(x) for x in part.split(":")]
        except ValueError:
            ends = []
        if not 1 <= len(ends) <= 2:
            raise InterpError(f"{what} '{spec}' is not valid; valid: all, 3,5,9 or 0:30")
        if len(ends) == 2 and ends[1] <= ends[0]:
            raise InterpError(f"{what} '{spec}': the range '{part}' is empty; valid: a:b with a < b (end exclusive), "
                              "e.g. 0:30")
        if max(ends) > MAX_POSITION:   # (a list of that range would not fit in memory; no input is that long)
            raise InterpError(f"{what} '{spec}': position {max(ends) - (len(ends) == 2)} out of range; valid: "
                              f"positions of the input, below {MAX_POSITION}")
        out += list(range(*ends)) if len(ends) == 2 else ends
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
