"""`interp capture`: save activations / recurrent states of a task or a text file (interp.capture)."""
from __future__ import annotations

import sys

from interp import InterpError
from interp.cli.options import (add_device, add_knob, add_model, add_n, add_seed, check_out, int_at_least, kv,
                                load_scaled, make_out, positions, refuse_unused, scale_args)


def add_parser(sub):
    c = sub.add_parser("capture", help="save activations / recurrent states (safetensors + JSON manifest)")
    add_model(c)
    c.add_argument("--task", help="generate inputs from this task (or give --text)")
    add_knob(c, help="task knob KNOB=VALUE (repeatable; with --task)")
    add_n(c, None, help="examples (with --task; default 64)")
    add_seed(c, None, help="random seed (with --task; default 0)")
    c.add_argument("--text", help="a UTF-8 text file instead of a task")
    c.add_argument("--seq-len", type=int_at_least(1), default=None, help="window length for --text (default 128; "
                   "with --lines: the most tokens kept of a line)")
    c.add_argument("--lines", action="store_true", help="with --text: one example per non-empty line, left-padded "
                   "to the longest (HF and zoo models; pads write nothing, the mask is stored with the inputs)")
    c.add_argument("--names", help="comma-separated hook names (default: every resid_post and rec.state)")
    c.add_argument("--positions", help="token positions to keep: 3,5,9 or 0:30 or a mix (default: all; with "
                   "--lines they index the left-padded batch, where every line ends at the last position)")
    c.add_argument("--max-memory", default="1GB", help="memory budget: forwards are sized to fit it (a smaller "
                   "batch than --batch-size is said), one that cannot hold one example is refused")
    c.add_argument("--shard-size", help="bytes of captures per shard file (default: --max-memory)")
    c.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype rec.state tensors are stored in (bfloat16/float16: half the bytes, rounded once "
                        "from float32)")
    c.add_argument("--batch-size", type=int_at_least(1), default=16, help="examples per forward pass")
    add_device(c)
    c.add_argument("--out", required=True, help="output directory (a run with the same settings resumes there)")
    c.add_argument("--overwrite", action="store_true", help="replace a capture with other settings in --out "
                   "(without it such a folder is refused, and one with the same settings is resumed)")
    scale_args(c)
    c.set_defaults(func=cmd_capture)


def _check_mode(a):
    """Each input's own options (--n, --seed, --knob with --task; --seq-len, --lines with --text), their defaults."""
    if (a.task is None) == (a.text is None):
        raise InterpError(f"give exactly one of --task or --text (got {'both' if a.task else 'neither'}); valid: "
                          "--task TASK or --text FILE")
    if a.task is not None:
        mine, theirs = "--task", [("--seq-len", a.seq_len), ("--lines", a.lines or None)]
        a.n, a.seed = 64 if a.n is None else a.n, 0 if a.seed is None else a.seed
    else:
        mine, theirs = "--text", [("--n", a.n), ("--seed", a.seed), ("--knob", a.knob)]
        a.seq_len = 128 if a.seq_len is None else a.seq_len
    refuse_unused(mine, theirs, "--n, --seed and --knob with --task, --seq-len and --lines with --text")
    if a.names is not None and not [n for n in a.names.split(",") if n.strip()]:
        raise InterpError(f"--names {a.names!r} names no hook; valid: comma-separated hook names, or leave --names "
                          "out for every resid_post and rec.state")


def _inputs(a, kind):
    """(tokens, source for the manifest, stored inputs or None) from --task or --text (exactly one of them)."""
    if a.task:
        from interp import tasks as T
        tokens = T.generate(a.task, a.n, seed=a.seed, **kv(a.knob)).tokens
        return tokens, {"task": a.task, "n": a.n, "seed": a.seed, "knobs": T.spec_knobs(a.task, kv(a.knob))}, None
    from interp.models import tokenize_lines, tokenize_text
    if a.lines:
        tokens, mask = tokenize_lines(a.text, a.model, kind, a.seq_len)
        return tokens, {"text": a.text, "seq_len": a.seq_len, "lines": True}, {"attention_mask": mask}
    return tokenize_text(a.text, a.model, kind, a.seq_len), {"text": a.text, "seq_len": a.seq_len}, None


def _names_and_positions(a, hm, length: int):
    """The hook names (checked; default every resid_post and rec.state) and the positions to keep."""
    from hooks.names import check
    names = a.names.split(",") if a.names else None
    if names is None:
        names = [n for n in hm.hook_names if n.endswith(("resid_post", "rec.state"))]
    check(names, hm.hook_names)
    keep = positions(a.positions)
    if keep:
        bad = [p for p in keep if not 0 <= p < length]
        if bad:
            raise InterpError(f"position {bad[0]} out of range; valid: 0..{length - 1} (the input has {length} "
                              "tokens)")
    return names, keep


def _warn_pads(mask, keep, given):
    """Warn where a kept position is padding in some --lines example (the batch is left-padded)."""
    import warnings
    pads = ~mask[:, keep].bool()
    if bool(pads.any()):
        n, T = mask.shape
        warnings.warn(f"--positions {given} with --lines: {int(pads.any(1).sum())} of {n} lines have padding at a kept "
                      f"position ({int(pads.sum())} of {pads.numel()} rows); the batch is left-padded, so each line "
                      f"ends at position {T - 1}: its rows at pads hold pad activations and zero states (the stored "
                      "attention_mask marks them)", stacklevel=2)


def cmd_capture(a):
    import hooks
    from interp.capture import capture, is_complete
    from interp.models import parse_size, read_text
    _check_mode(a)
    check_out(a.out)  # what can be checked before the model loads
    parse_size(a.max_memory)
    if a.shard_size is not None:
        parse_size(a.shard_size)
    positions(a.positions)
    if a.text is not None:
        read_text(a.text)
    model, kind, ctx = load_scaled(a)
    tokens, source, inputs = _inputs(a, kind)
    hm = hooks.wrap(model)
    names, keep = _names_and_positions(a, hm, tokens.shape[1])
    if keep and inputs is not None:
        _warn_pads(inputs["attention_mask"], keep, a.positions)
    meta = {"model": a.model, **source}
    done = not a.overwrite and is_complete(a.out, tokens.shape[0])
    kw = dict(positions=keep, max_memory=a.max_memory, shard_size=a.shard_size, batch_size=a.batch_size, meta=meta,
              state_dtype=a.state_dtype, overwrite=a.overwrite, **({} if inputs is None else {"inputs": inputs}))
    if ctx is None or ctx.is_main:
        make_out(a.out)
    if ctx is not None:
        from interp import distributed
        out = distributed.capture(model, tokens, names, a.out, ctx=ctx, **kw)
        if not ctx.is_main:
            return
        if done and ctx.distributed:  # a single process says so itself
            print(f"{out}: capture already complete ({tokens.shape[0]} examples); nothing to do "
                  "(--overwrite captures again)", file=sys.stderr)
    else:
        out = capture(model, tokens, names, a.out, **kw)
    if done:
        return
    procs = f", {ctx.world_size} processes" if ctx is not None and ctx.distributed else ""
    print(f"wrote {out}/manifest.json ({tokens.shape[0]} examples, {len(names)} names{procs})")
