"""`interp patterns`: draw one example's pattern at one layer, softmax attention or a recurrent layer's exact
effective attention, with its tokens (a PNG, or with --html an interactive circuitsvis page, which without
--layer holds every layer); or, with --who-reads, the who-reads-the-fact map (interp.patterns)."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.cli.options import MODEL_HELP, add_device, add_knob, add_n, add_seed, int_at_least, kv, load_any
from interp.oneshot import one_shot, spec_of


def add_parser(sub):
    c = sub.add_parser("patterns", help="draw one example's attention / effective-attention pattern at a layer, "
                       "or (--who-reads) which heads read the task's fact")
    c.add_argument("--model", action="append", default=None,
                   help=MODEL_HELP + " (default gdn75; repeatable with --who-reads, default there: the three "
                        "shipped models)")
    c.add_argument("--task", action="append", default=None,
                   help="task (default mqar; repeatable with --who-reads, default there: mqar and state_recall)")
    add_knob(c, help="task knob KNOB=VALUE (repeatable; on top of state_recall's complexity=assign default)")
    c.add_argument("--layer", type=int, help="the layer to draw (required without --who-reads or --html)")
    c.add_argument("--kind", choices=["attn", "rec"], help="which mixer of a layer that has both (parallel fusion)")
    c.add_argument("--example", type=int, default=None, help="which example of the task batch to draw (default 0)")
    c.add_argument("--html", action="store_true",
                   help="write an interactive HTML view (circuitsvis; its JavaScript inlined, so the file opens "
                        "offline) instead of the PNG: --layer's pattern, or without --layer every attention and "
                        "recurrent layer of the example on one page. Needs circuitsvis (pip install circuitsvis, "
                        "or the notebook extra); without it an error says so (exit 2)")
    add_seed(c)
    c.add_argument("--who-reads", action="store_true",
                   help="per layer and head, the share of the answer row's pattern on the ground-truth source "
                        "token, over --n examples: who_reads.png, results.csv, report.md")
    add_n(c, 128, help="examples per (model, task) with --who-reads")
    c.add_argument("--n-boot", type=int_at_least(1), default=2000, help="bootstrap resamples of the 95%% intervals")
    add_device(c)
    c.add_argument("--out", default="runs/patterns")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a figure or map made with other settings (each records them beside it: "
                        "<figure>.png.json or .html.json, the map's spec.json)")
    c.set_defaults(func=cmd_patterns, resumes=False)


def _knobs(a, task):
    from interp.patterns import DEFAULT_KNOBS
    return {**DEFAULT_KNOBS.get(task, {}), **kv(a.knob)}


def _draw(a):
    from interp import patterns as P
    from interp import tasks as T
    if a.layer is None and not a.html:
        raise InterpError("give --layer (the layer to draw), --html for every layer's interactive view, or "
                          "--who-reads for the map")
    if a.html:
        P.circuitsvis_js()  # fail before the model runs where circuitsvis is missing
    if len(a.model or []) > 1 or len(a.task or []) > 1:
        raise InterpError("one --model and one --task for a pattern figure (several only with --who-reads)")
    spec, task = (a.model or ["gdn75"])[0], (a.task or ["mqar"])[0]
    a.example = 0 if a.example is None else a.example
    if a.example < 0:
        raise InterpError(f"--example {a.example} must be >= 0")
    batch = T.generate(task, a.example + 1, seed=a.seed, **_knobs(a, task))
    model = load_any(spec, a.device)
    rows, src = P.example_marks(batch, a.example)
    name, where = Path(spec).name, f"{task} example {a.example} (seed {a.seed})"
    layer = "" if a.layer is None else f"_L{a.layer}{a.kind or ''}"    # no --layer: --html of every layer
    path = Path(a.out) / f"{name}_{task}{layer}_ex{a.example}.{'html' if a.html else 'png'}"
    made = spec_of({spec: model}, task=task, knobs=_knobs(a, task), seed=a.seed, layer=a.layer, kind=a.kind,
                   example=a.example)
    with one_shot(path.with_name(path.name + ".json"), [path], made, a.overwrite):
        if a.layer is None:
            panels, words = P.example_patterns(model, batch, a.example)
            P.pattern_html(panels, words, path, f"{name} / {where}, every layer", rows, src)
            print(f"wrote {path} ({len(panels)} patterns, {len(words)} tokens)")
            return
        A, kind, words = P.example_pattern(model, batch, a.layer, a.example, a.kind)
        title = f"{name} / {where}, layer {a.layer} ({kind})"
        if a.html:
            P.pattern_html([(a.layer, kind, A)], words, path, title, rows, src)
        else:
            P.plot_pattern(A, kind, words, path, title + "\norange: answer rows"
                           + ("; green: their ground-truth source" if src else ""), rows, src)
    print(f"wrote {path} ({A.shape[0]} {'map' if A.shape[0] == 1 else 'heads'}, {A.shape[-1]} tokens)")


def _who_reads(a):
    from interp import patterns as P
    from interp.demo import DEFAULT_SET
    if a.html:
        raise InterpError("--html draws one example's patterns; the --who-reads map has no HTML view")
    drawing = [f for f, v in (("--layer", a.layer), ("--kind", a.kind), ("--example", a.example)) if v is not None]
    if drawing:
        raise InterpError(f"{drawing[0]} chooses one example's drawing; the --who-reads map covers every layer and "
                          "head of --n examples; valid: --who-reads without it, or a drawing without --who-reads")
    tasks = a.task or list(P.SOURCE_TASKS)
    models = {spec: load_any(spec, a.device) for spec in a.model or list(DEFAULT_SET)}
    out = Path(a.out)
    made = spec_of(models, knobs={t: _knobs(a, t) for t in tasks}, n=a.n, seed=a.seed, n_boot=a.n_boot)
    with one_shot(out / "spec.json", [out / f for f in ("who_reads.png", "results.csv", "report.md")], made,
                  a.overwrite):
        res = []
        for spec, model in models.items():
            for task in tasks:
                r = P.who_reads(model, task, n=a.n, seed=a.seed, name=Path(spec).name, n_boot=a.n_boot,
                                knobs=_knobs(a, task))
                best = r.table.sort_values("share").iloc[-1]
                print(f"{r.model:>12} {task:>13}: kept {r.kept}/{r.items}; top head L{best['layer']} {best['kind']} "
                      f"h{best['head']} share {best['share']:.2f} [{best['lo']:.2f}, {best['hi']:.2f}]")
                res.append(r)
        P.write_who_reads(res, out, n_boot=a.n_boot)
    print(f"wrote {out}/who_reads.png, {out}/results.csv, {out}/report.md, {out}/spec.json")


def cmd_patterns(a):
    from hooks.effective import PatternMemoryError
    try:
        _who_reads(a) if a.who_reads else _draw(a)
    except PatternMemoryError as e:
        raise InterpError(str(e)) from None
