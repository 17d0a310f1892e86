"""`interp eval`: accuracy of one or more models against each difficulty knob (interp.evaluate)."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.cli.options import add_device, add_knob, add_n, add_seed, check_out, load_any, write_spec


def add_parser(sub):
    e = sub.add_parser("eval", help="accuracy against each difficulty knob")
    e.add_argument("--model", action="append", required=True, help="model directory or default name (repeatable)")
    e.add_argument("--task", action="append", default=None, help="task (repeatable; default: every task)")
    add_knob(e, help="only these knobs of the --task(s) (repeatable; default: every knob of the difficulty grid)")
    add_n(e, 200, help="examples per difficulty point")
    add_seed(e, 123)
    add_device(e)
    e.add_argument("--out", help="also write the table to this CSV file, and its figure next to it (.png)")
    e.set_defaults(func=cmd_eval)


def cmd_eval(a):
    from interp.evaluate import sweep
    from interp.store import save_csv
    if a.knob and not a.task:
        raise InterpError(f"--knob {a.knob[0]} needs --task (knob names differ between tasks); valid: "
                          "--task T --knob KNOB")
    if a.out:
        check_out(a.out, file=True)
    models = {m: load_any(m, a.device) for m in a.model}
    knobs = {t: a.knob for t in a.task} if a.knob else None
    res = sweep(models, tasks=a.task, knobs=knobs, n=a.n, seed=a.seed)
    print(res.pivot().to_string(float_format=lambda x: f"{x:.2f}"))
    print(f"(answer accuracy; {a.n} examples per point, seed {a.seed}; one trained model per column)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        save_csv(a.out, res, index=False)
        png, js = Path(a.out).with_suffix(".png"), Path(a.out).with_suffix(".json")
        res.plot(png)
        write_spec(js, models, tasks=a.task, knobs=a.knob or [], n=a.n, seed=a.seed)
        print(f"wrote {a.out}, {png}, {js}")
