"""`interp capture`: save activations / recurrent states of a task or a text file (interp.capture)."""
from __future__ import annotations

from interp import InterpError
from interp.cli.options import add_device, add_knob, add_model, add_n, add_seed, kv, load_scaled, scale_args


def add_parser(sub):
    c = sub.add_parser("capture", help="save activations / recurrent states (safetensors + JSON manifest)")
    add_model(c)
    c.add_argument("--task", help="generate inputs from this task")
    add_knob(c)
    add_n(c, 64, help="examples (with --task)")
    add_seed(c)
    c.add_argument("--text", help="a text file instead of a task")
    c.add_argument("--seq-len", type=int, default=128, help="window length for --text")
    c.add_argument("--names", help="comma-separated hook names (default: every resid_post and rec.state)")
    c.add_argument("--positions", help="comma-separated token positions to keep (default: all)")
    c.add_argument("--max-memory", default="1GB", help="flush a shard to disk once this much is held")
    c.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype rec.state tensors are stored in (bfloat16/float16: half the bytes, rounded once "
                        "from float32)")
    c.add_argument("--batch-size", type=int, default=16)
    add_device(c)
    c.add_argument("--out", required=True)
    scale_args(c)
    c.set_defaults(func=cmd_capture)


def _inputs(a, kind):
    """(tokens, source for the manifest) from --task or --text (exactly one of them)."""
    if (a.task is None) == (a.text is None):
        raise InterpError("give exactly one of --task or --text")
    if a.task:
        from interp import tasks as T
        tokens = T.generate(a.task, a.n, seed=a.seed, **kv(a.knob)).tokens
        return tokens, {"task": a.task, "n": a.n, "seed": a.seed, "knobs": kv(a.knob)}
    from interp.models import tokenize_text
    return tokenize_text(a.text, a.model, kind, a.seq_len), {"text": a.text, "seq_len": a.seq_len}


def _names_and_positions(a, hm, length: int):
    """The hook names (checked; default every resid_post and rec.state) and the positions to keep."""
    from hooks.names import check
    names = a.names.split(",") if a.names else None
    if names is None:
        names = [n for n in hm.hook_names if n.endswith(("resid_post", "rec.state"))]
    check(names, hm.hook_names)
    positions = [int(p) for p in a.positions.split(",")] if a.positions else None
    if positions:
        bad = [p for p in positions if not 0 <= p < length]
        if bad:
            raise InterpError(f"position {bad[0]} out of range 0..{length - 1}")
    return names, positions


def cmd_capture(a):
    import hooks
    from interp.capture import capture
    model, kind, ctx = load_scaled(a)
    tokens, source = _inputs(a, kind)
    hm = hooks.wrap(model)
    names, positions = _names_and_positions(a, hm, tokens.shape[1])
    meta = {"model": a.model, **source}
    if ctx is not None:
        from interp import distributed
        out = distributed.capture(model, tokens, names, a.out, ctx=ctx, positions=positions, max_memory=a.max_memory,
                                  batch_size=a.batch_size, meta=meta, state_dtype=a.state_dtype)
        if not ctx.is_main:
            return
    else:
        out = capture(model, tokens, names, a.out, positions=positions, max_memory=a.max_memory,
                      batch_size=a.batch_size, meta=meta, state_dtype=a.state_dtype)
    procs = f", {ctx.world_size} processes" if ctx is not None and ctx.distributed else ""
    print(f"wrote {out}/manifest.json ({tokens.shape[0]} examples, {len(names)} names{procs})")
