"""`interp train`: train a zoo model on a task mixture (interp.train; --seeds: several at once, interp.stacked)."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from interp import InterpError
from interp.cli.options import INT_MAX, add_device, add_seed, check_out, finite_float, int_at_least

DEFAULT_TASKS = ["mqar", "state_recall"]


def add_parser(sub):
    from interp.tasks import TASKS
    from interp.zoo.layouts import preset_names
    t = sub.add_parser("train", help="train a zoo model on a task mixture")
    t.add_argument("--layout", default="gdn75", help=f"preset ({', '.join(preset_names()[:6])}, ...) "
                   "or a comma-separated list of mixers")
    t.add_argument("--task", action="append", default=None,
                   help=f"task (repeatable; default: {', '.join(DEFAULT_TASKS)}); one of {', '.join(TASKS)}")
    t.add_argument("--out", required=True,
                   help="output directory: the same settings again resume its interrupted run (a finished one is "
                        "left as it is); other settings are refused (interp.runfolder)")
    t.add_argument("--d-model", type=int_at_least(1), default=128, help="residual stream width")
    t.add_argument("--n-layers", type=int_at_least(1), default=12, help="layers")
    t.add_argument("--n-heads", type=int_at_least(1), default=4, help="attention / recurrent heads per layer")
    t.add_argument("--head-dim", type=int_at_least(2), default=32, help="dimension per head (even, for RoPE)")
    t.add_argument("--neg-eig", action="store_true", help="GDN with negative eigenvalues (beta in (0,2))")
    t.add_argument("--match-params", metavar="LAYOUT", help="size the MLP so the parameter count matches LAYOUT's")
    t.add_argument("--steps", type=int_at_least(1), default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=int_at_least(1), default=64, help="sequences per step")
    t.add_argument("--lr", type=finite_float(0, 10, above=True), default=None,
                   help="peak learning rate (AdamW; default 1e-3; not with --lrs)")
    t.add_argument("--warmup", type=int_at_least(0), default=100,
                   help="linear learning-rate warm-up steps (a warning when not fewer than --steps)")
    t.add_argument("--induction-steps", type=int_at_least(0), default=None, metavar="N",
                   help="warm up on short induction sequences for at most the first N steps, before the task "
                        "mixture (a softmax transformer does not form its recall circuit from the tasks' "
                        "answer-only loss in budget otherwise; see interp.train); default min(2000, steps/4) for "
                        "layouts with attention, 0 (off) for attention-free ones")
    t.add_argument("--induction-until", type=finite_float(0, 1), default=0.9, metavar="ACC",
                   help="end the warm-up early once held-out induction accuracy reaches ACC")
    t.add_argument("--eval-every", type=int_at_least(1), default=250, help="steps between held-out evaluations")
    t.add_argument("--save-every", type=int_at_least(1), default=500, help="steps between checkpoints")
    add_seed(t)
    t.add_argument("--seeds", type=_seed_list, default=None, metavar="S1,S2,...",
                   help="instead of --seed: one run per seed, trained at once as one stacked module "
                        "(interp.stacked), each saved to <out>/seed<S> as a single run would be")
    t.add_argument("--lrs", type=_lr_list, default=None, metavar="LR1,LR2,...",
                   help="instead of --lr: a learning-rate sweep, one run per rate (and per seed of --seeds, "
                        "default --seed), trained at once as one stack into <out>/lr<LR>_seed<S>; writes "
                        "<out>/sweep.csv and sweep_summary.csv (accuracy per rate, 95%% intervals over seeds) and "
                        "says whether the best rate lies inside the range (interp.lrsweep)")
    add_device(t, "auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--scan-backend", default="auto", choices=["auto", "reference"],
                   help="recurrent scans: fla kernels on CUDA (auto) or the pure-torch reference everywhere")
    t.add_argument("--time-limit", type=finite_float(0), default=0.0, help="minutes; stop early and save (0 = none)")
    t.add_argument("--no-resume", action="store_true",
                   help="start afresh, removing the model, log and checkpoints a run left in --out")
    t.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on a GPU: replay each step's forward and backward from a CUDA graph per batch shape "
                        "(one run: interp.train_graph; --seeds / --lrs: interp.stacked_graph; the eager step's "
                        "numbers up to rounding, faster; ignored on a CPU); --no-cuda-graphs runs it eagerly")
    t.add_argument("--length-split", action="store_true",
                   help="with --seeds / --lrs: run a step's shorter batches in a second, shorter pass instead of "
                        "padding them to the longest (interp.stacked.split_groups; the same numbers up to float "
                        "rounding; experimental: 2.8x faster per step on a CPU, 4%% more runs per GPU-hour on an H100)")
    t.set_defaults(func=cmd_train)


def _distinct_list(cast, kind: str, noun: str, example: str, ok, valid: str):
    """An argparse type: distinct comma-separated values of ``cast`` for which ``ok`` holds."""
    def parse(s: str) -> list:
        try:
            vals = [cast(x) for x in s.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not a comma-separated list of {kind}; "
                                             f"valid: e.g. {example}") from None
        bad = [x for x in vals if not ok(x)] + [x for i, x in enumerate(vals) if x in vals[:i]]
        if bad:
            what = "out-of-range" if not ok(bad[0]) else "repeated"
            raise argparse.ArgumentTypeError(f"'{s}': {what} {noun} {bad[0]:g}; valid: {valid}")
        return vals
    return parse


_seed_list = _distinct_list(int, "integers", "seed", "0,1,2", lambda x: 0 <= x <= INT_MAX,
                            "distinct integers >= 0 and <= 2**53")
_lr_list = _distinct_list(float, "numbers", "rate", "3e-4,1e-3,3e-3", lambda x: 0 < x <= 10,
                          "distinct rates > 0 and <= 10")


MAX_PARAMS = 1e11


def _model_fields(a) -> dict:
    """The ZooConfig fields of the command's model, validated (--match-params sizes its MLP)."""
    from interp.tasks import VOCAB
    from interp.zoo import HybridLM, ZooConfig, match_params
    model = dict(d_model=a.d_model, n_layers=a.n_layers, layout=a.layout, n_heads=a.n_heads,
                 head_dim=a.head_dim, gdn_neg_eig=a.neg_eig)
    d, inner = a.d_model, a.n_heads * a.head_dim   # about: q, k, v, out projections and a 4x MLP per layer
    approx = a.n_layers * (4 * d * inner + 8 * d * d)
    if approx > MAX_PARAMS:   # (building it would fail deep in torch, or run for hours before failing)
        raise InterpError(f"--d-model {d}, --n-layers {a.n_layers}, --n-heads {a.n_heads}, --head-dim {a.head_dim} "
                          f"make a model of about {approx:.2g} parameters; valid: up to {MAX_PARAMS:.0g} (the zoo's "
                          "models are small: d=128-768, 4-12 layers)")
    if a.match_params:
        ref = ZooConfig(vocab_size=len(VOCAB), **{**model, "layout": a.match_params})
        target = HybridLM(ref).num_params()
        model["mlp_hidden"] = match_params(ZooConfig(vocab_size=len(VOCAB), **model), target).mlp_hidden
    else:
        ZooConfig(vocab_size=len(VOCAB), **model)  # validate before any work
    return model


def cmd_train(a):
    from interp.runfolder import is_finished
    from interp.train import TrainConfig, default_induction_steps, train
    if a.task is None:
        a.task = list(DEFAULT_TASKS)
    check_out(a.out)
    model = _model_fields(a)
    cfg = TrainConfig(out=a.out, model=model, tasks=a.task, steps=a.steps, batch_size=a.batch_size,
                      lr=1e-3 if a.lr is None else a.lr, warmup=a.warmup, eval_every=a.eval_every, save_every=a.save_every,
                      seed=a.seed, device=a.device, grid_max={}, scan_backend=a.scan_backend, time_limit=a.time_limit,
                      induction_steps=(default_induction_steps(model, a.steps) if a.induction_steps is None
                                       else a.induction_steps),
                      induction_until=a.induction_until,
                      command="interp " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    if a.lrs:
        if a.lr is not None:
            raise InterpError(f"--lr {a.lr:g} does not apply with --lrs (each run trains at one of its rates); valid: "
                              "--lr for one rate, or --lrs for a sweep")
        from interp import lrsweep
        from interp.stacked import check_configs, train_stacked
        cfgs = lrsweep.sweep_configs(cfg, a.lrs, a.seeds or [a.seed])
        check_configs(cfgs)   # before sweep.json records anything
        lrsweep.claim(a.out, cfgs, resume=not a.no_resume)
        train_stacked(cfgs, resume=not a.no_resume, cuda_graphs=a.cuda_graphs, length_split=a.length_split)
        print(lrsweep.report(a.out, cfgs))
        return
    if a.seeds:
        from interp.stacked import train_stacked
        cfgs = [dataclasses.replace(cfg, seed=s, out=str(Path(a.out) / f"seed{s}")) for s in a.seeds]
        kept = [not a.no_resume and is_finished(Path(c.out), c) for c in cfgs]
        models = train_stacked(cfgs, resume=not a.no_resume, cuda_graphs=a.cuda_graphs, length_split=a.length_split)
        for c, m, k in zip(cfgs, models, kept):
            print(f"{'kept' if k else 'saved'} {c.out} ({m.num_params() / 1e6:.2f}M params){_unfinished(c)}")
        return
    kept = not a.no_resume and is_finished(Path(cfg.out), cfg)
    m = train(cfg, resume=not a.no_resume, cuda_graphs=a.cuda_graphs)
    print(f"{'kept' if kept else 'saved'} {a.out} ({m.num_params() / 1e6:.2f}M params){_unfinished(cfg)}")


def _unfinished(cfg) -> str:
    """'' for a run that reached its steps, else what says it did not (a --time-limit stop)."""
    from interp.store import read_json
    meta = Path(cfg.out) / "meta.json"
    done = int((read_json(meta) if meta.is_file() else {}).get("steps_done") or 0)
    return "" if done >= cfg.steps else (f": UNFINISHED at step {done} of {cfg.steps} (--time-limit); the same "
                                         "command resumes it")
