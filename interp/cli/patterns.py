"""`interp patterns`: draw one example's pattern at one layer, softmax attention or a recurrent layer's exact
effective attention, with its tokens (a PNG, or with --html an interactive circuitsvis page, which without
--layer holds every layer); or, with --who-reads, the who-reads-the-fact map (interp.patterns)."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.cli.options import (MODEL_HELP, add_device, add_knob, add_n, add_seed, int_at_least, load_any, once,
                                refuse_unused)
from interp.oneshot import one_shot, spec_of

MAX_EXAMPLE = 9999   # example i is drawn from a batch of i + 1 (a task's examples come from one seeded stream)


def add_parser(sub):
    c = sub.add_parser("patterns", help="draw one example's attention / effective-attention pattern at a layer, "
                       "or (--who-reads) which heads read the task's fact")
    c.add_argument("--model", action="append", default=None,
                   help=MODEL_HELP + " (default gdn75; repeatable with --who-reads, default there: the three "
                        "shipped models)")
    c.add_argument("--task", action="append", default=None,
                   help="task (default mqar; repeatable with --who-reads, default there: mqar and state_recall)")
    add_knob(c, help="task knob KNOB=VALUE (repeatable, each knob once; on top of state_recall's complexity=assign "
                     "default)")
    c.add_argument("--layer", type=int, help="the layer to draw (required without --who-reads or --html)")
    c.add_argument("--kind", choices=["attn", "rec"],
                   help="which mixer of --layer, where it has both (parallel fusion)")
    c.add_argument("--example", type=int, default=None,
                   help=f"which example of the task batch to draw (default 0; 0..{MAX_EXAMPLE}: for others, "
                        "another --seed)")
    c.add_argument("--html", action="store_true",
                   help="write an interactive HTML view (circuitsvis; its JavaScript inlined, so the file opens "
                        "offline) instead of the PNG: --layer's pattern, or without --layer every attention and "
                        "recurrent layer of the example on one page. Needs circuitsvis (pip install circuitsvis, "
                        "or the notebook extra); without it an error says so (exit 2)")
    add_seed(c)
    c.add_argument("--who-reads", action="store_true",
                   help="per layer and head, the share of the answer row's pattern on the ground-truth source "
                        "token, over --n examples: who_reads.png, results.csv, report.md")
    add_n(c, None, help="examples per (model, task) with --who-reads (default 128; at least 2)")
    c.add_argument("--n-boot", type=int_at_least(1), default=None,
                   help="bootstrap resamples of the 95%% intervals with --who-reads (default 2000)")
    add_device(c)
    c.add_argument("--out", default="runs/patterns")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a figure or map made with other settings (each records them beside it: "
                        "<figure>.png.json or .html.json, the map's spec.json)")
    c.set_defaults(func=cmd_patterns, resumes=False)


def _knobs(a, task):
    from interp.cli.options import kv
    from interp.patterns import DEFAULT_KNOBS
    return {**DEFAULT_KNOBS.get(task, {}), **kv(a.knob)}


def _spec_knobs(a, task):
    """The knobs a spec records: those other than the task's defaults (a knob given at its default draws the same)."""
    from interp.tasks import spec_knobs
    return spec_knobs(task, _knobs(a, task))


def _draw(a):
    from interp import patterns as P
    from interp import tasks as T
    if a.layer is None and not a.html:
        raise InterpError("give --layer (the layer to draw), --html for every layer's interactive view, or "
                          "--who-reads for the map")
    refuse_unused("a pattern drawing (without --who-reads)", [("--n", a.n), ("--n-boot", a.n_boot)],
                  "--n and --n-boot with --who-reads")
    if a.kind is not None and a.layer is None:
        raise InterpError(f"--kind {a.kind} chooses the mixer of --layer; valid: --kind with --layer (without --layer, "
                          "--html draws every mixer of every layer)")
    if a.html:
        P.circuitsvis_js()  # fail before the model runs where circuitsvis is missing
    if len(a.model or []) > 1 or len(a.task or []) > 1:
        raise InterpError("one --model and one --task for a pattern figure (several only with --who-reads)")
    spec, task = (a.model or ["gdn75"])[0], (a.task or ["mqar"])[0]
    a.example = 0 if a.example is None else a.example
    if not 0 <= a.example <= MAX_EXAMPLE:
        raise InterpError(f"--example {a.example} is out of range; valid: 0..{MAX_EXAMPLE} (example i is drawn from a "
                          "batch of i + 1; for other examples use another --seed)")
    batch = T.generate(task, a.example + 1, seed=a.seed, **_knobs(a, task))
    model = load_any(spec, a.device)
    if a.layer is not None:
        P.check_mixer(model, a.layer, a.kind)     # before anything is written
    rows, src = P.example_marks(batch, a.example)
    name, where = Path(spec).name, f"{task} example {a.example} (seed {a.seed})"
    layer = "" if a.layer is None else f"_L{a.layer}{a.kind or ''}"    # no --layer: --html of every layer
    path = Path(a.out) / f"{name}_{task}{layer}_ex{a.example}.{'html' if a.html else 'png'}"
    made = spec_of({spec: model}, task=task, knobs=_spec_knobs(a, task), seed=a.seed, layer=a.layer, kind=a.kind,
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
    import hooks
    from interp import patterns as P
    from interp import tasks as T
    from interp.demo import DEFAULT_SET
    if a.html:
        raise InterpError("--html draws one example's patterns; the --who-reads map has no HTML view")
    drawing = [f for f, v in (("--layer", a.layer), ("--kind", a.kind), ("--example", a.example)) if v is not None]
    if drawing:
        raise InterpError(f"{drawing[0]} chooses one example's drawing; the --who-reads map covers every layer and "
                          "head of --n examples; valid: --who-reads without it, or a drawing without --who-reads")
    a.n, a.n_boot = 128 if a.n is None else a.n, 2000 if a.n_boot is None else a.n_boot
    if a.n < 2:
        raise InterpError(f"--n {a.n} is out of range with --who-reads; valid: integers >= 2 (a bootstrap interval "
                          "needs two examples)")
    tasks, specs = a.task or list(P.SOURCE_TASKS), a.model or list(DEFAULT_SET)
    once("--task", tasks)
    once("--model", specs)
    for t in tasks:      # the task, its knobs and its fact's source, before any model loads
        P.fact_sources(T.generate(t, 2, seed=a.seed, **_knobs(a, t)))
    names = [Path(s).name for s in specs]     # a model's label: its folder name, or all of it where names collide
    label = {s: n if names.count(n) == 1 else s for s, n in zip(specs, names)}
    models = {spec: load_any(spec, a.device) for spec in specs}
    for model in models.values():
        P.units(hooks.wrap(model))       # mixers without per-head patterns: refused before anything is written
    out = Path(a.out)
    made = spec_of(models, knobs={t: _spec_knobs(a, t) for t in tasks}, n=a.n, seed=a.seed, n_boot=a.n_boot)
    with one_shot(out / "spec.json", [out / f for f in ("who_reads.png", "results.csv", "report.md")], made,
                  a.overwrite):
        res = []
        for spec, model in models.items():
            for task in tasks:
                r = P.who_reads(model, task, n=a.n, seed=a.seed, name=label[spec], n_boot=a.n_boot,
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
