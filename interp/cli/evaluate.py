"""`interp eval`: accuracy of one or more models against each difficulty knob (interp.evaluate)."""
from __future__ import annotations

from interp.cli.options import add_device, add_knob, add_n, add_seed, load_any


def add_parser(sub):
    e = sub.add_parser("eval", help="accuracy against each difficulty knob")
    e.add_argument("--model", action="append", required=True, help="model directory or default name (repeatable)")
    e.add_argument("--task", action="append", default=None)
    add_knob(e, help="only these knobs")
    add_n(e, 200)
    add_seed(e, 123)
    add_device(e)
    e.add_argument("--out", help="CSV path")
    e.set_defaults(func=cmd_eval)


def cmd_eval(a):
    from interp.evaluate import sweep
    models = {m: load_any(m, a.device) for m in a.model}
    knobs = {t: a.knob for t in a.task} if a.knob else None
    res = sweep(models, tasks=a.task, knobs=knobs, n=a.n, seed=a.seed)
    print(res.to_string(index=False))
    if a.out:
        res.to_csv(a.out, index=False)
        print(f"wrote {a.out}")
