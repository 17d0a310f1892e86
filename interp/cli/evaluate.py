"""`interp eval`: accuracy of one or more models against each difficulty knob (interp.evaluate)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from interp import InterpError
from interp.cli.options import add_device, add_knob, add_n, add_seed, check_out, load_any, once


def add_parser(sub):
    e = sub.add_parser("eval", help="accuracy against each difficulty knob")
    e.add_argument("--model", action="append", required=True, help="model directory or default name (repeatable)")
    e.add_argument("--task", action="append", default=None, help="task (repeatable; default: every task)")
    add_knob(e, help="only these knobs of the --task(s) (repeatable; default: every knob of the difficulty grid)")
    add_n(e, 200, help="examples per difficulty point")
    add_seed(e, 123)
    add_device(e)
    e.add_argument("--out", help="also write the table to this CSV file, its figure (.png) and what made them (.json) "
                   "next to it")
    e.add_argument("--overwrite", action="store_true", help="replace an --out table made with other settings")
    e.set_defaults(func=cmd_eval, resumes=False)


def cmd_eval(a):
    from interp.evaluate import plan_sweep, run_sweep
    from interp.store import save_csv
    if a.knob and not a.task:
        raise InterpError(f"--knob {a.knob[0]} needs --task (knob names differ between tasks); valid: "
                          "--task T --knob KNOB")
    if a.overwrite and not a.out:
        raise InterpError("--overwrite without --out: there is no table to overwrite; valid: --overwrite with "
                          "--out FILE.csv")
    for flag, values in (("--model", a.model), ("--task", a.task), ("--knob", a.knob)):
        once(flag, values)
    if a.out:
        check_out(a.out, file=True)
        if Path(a.out).suffix.lower() != ".csv":
            raise InterpError(f"--out '{a.out}': the table is written as CSV, with its figure (.png) and spec (.json) "
                              "beside it; valid: a path ending in .csv")
    models = {m: load_any(m, a.device) for m in a.model}
    knobs = {t: a.knob for t in a.task} if a.knob else None
    jobs = plan_sweep(models, tasks=a.task, knobs=knobs, n=a.n, seed=a.seed)     # every check before --out
    files, held = (), contextlib.nullcontext()
    if a.out:       # the table, its figure and its spec, checked and locked (interp.oneshot)
        from interp.oneshot import one_shot, spec_of
        files = (Path(a.out), Path(a.out).with_suffix(".png"), Path(a.out).with_suffix(".json"))
        held = one_shot(files[2], files[:2], spec_of(models, tasks=a.task, knobs=a.knob or [], n=a.n, seed=a.seed),
                        a.overwrite)
    with held:
        res = run_sweep(models, jobs)
        print(res.pivot().to_string(float_format=lambda x: f"{x:.2f}"))
        print(f"(answer accuracy; {a.n} examples per point, seed {a.seed}; one trained model per column)")
        if files:
            save_csv(files[0], res, index=False)
            res.plot(files[1])
            print(f"wrote {', '.join(map(str, files))}")
