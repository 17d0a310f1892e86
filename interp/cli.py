"""The `interp` command line. Every user error prints one line `error: ...` and exits with 2."""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from interp import InterpError


def _kv(items) -> dict:
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


def cmd_train(a):
    from interp.train import TrainConfig, default_induction_steps, train
    from interp.zoo import ZooConfig, match_params
    from interp.tasks import VOCAB
    model = dict(d_model=a.d_model, n_layers=a.n_layers, layout=a.layout, n_heads=a.n_heads,
                 head_dim=a.head_dim, gdn_neg_eig=a.neg_eig)
    if a.match_params:
        ref = ZooConfig(vocab_size=len(VOCAB), **{**model, "layout": a.match_params})
        from interp.zoo import HybridLM
        target = HybridLM(ref).num_params()
        model["mlp_hidden"] = match_params(ZooConfig(vocab_size=len(VOCAB), **model), target).mlp_hidden
    else:
        ZooConfig(vocab_size=len(VOCAB), **model)  # validate before any work
    cfg = TrainConfig(out=a.out, model=model, tasks=a.task, steps=a.steps, batch_size=a.batch_size,
                      lr=a.lr, warmup=a.warmup, eval_every=a.eval_every, save_every=a.save_every,
                      seed=a.seed, device=a.device, grid_max={}, scan_backend=a.scan_backend, time_limit=a.time_limit,
                      induction_steps=(default_induction_steps(model, a.steps) if a.induction_steps is None
                                       else a.induction_steps),
                      induction_until=a.induction_until,
                      command="interp " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    m = train(cfg, resume=not a.no_resume)
    print(f"saved {a.out} ({m.num_params() / 1e6:.2f}M params)")


def _load_any(spec, device="cpu"):
    from interp.models import load_any
    return load_any(spec, device=device)[0]


def cmd_eval(a):
    from interp.evaluate import sweep
    models = {m: _load_any(m, a.device) for m in a.model}
    knobs = {t: a.knob for t in a.task} if a.knob else None
    res = sweep(models, tasks=a.task, knobs=knobs, n=a.n, seed=a.seed)
    print(res.to_string(index=False))
    if a.out:
        res.to_csv(a.out, index=False)
        print(f"wrote {a.out}")


def cmd_demo(a):
    from interp.demo import run_demo
    out = run_demo(out=a.out, n=a.n)
    print((out / "report.md").read_text())
    print(f"wrote {out}/report.md, {out}/accuracy.png, {out}/results.csv")


def _load_scaled(a):
    """(model, kind, ctx) for capture / patch: ``--distributed`` joins the torchrun process group
    (one model copy per rank; --device cuda -> cuda:<local rank>); ``--device-map`` spreads one
    model over the GPUs of this host (``--gpu-memory`` caps each device); ``--dtype``."""
    from interp.models import load_any
    device, ctx = a.device, None
    if a.distributed:
        if a.device_map:
            raise InterpError("--distributed and --device-map together are not supported: each process would "
                              "spread its model over every GPU; use one of them")
        from interp import distributed
        ctx = distributed.init()
        device = ctx.device(a.device)
    model, kind = load_any(a.model, device=device, dtype=a.dtype, device_map=a.device_map,
                           max_memory=a.gpu_memory)
    return model, kind, ctx


def _scale_args(parser):
    parser.add_argument("--distributed", action="store_true", help="data-parallel over the processes torchrun "
                        "starts: torchrun --nproc-per-node 2 -m interp.cli -- <command> ... --distributed (rank 0 merges)")
    parser.add_argument("--device-map", default=None, help="spread a local HF checkpoint over this host's GPUs: "
                        "auto, balanced, balanced_low_0 or sequential (needs accelerate)")
    parser.add_argument("--gpu-memory", default=None, help="with --device-map: cap per device, e.g. 40GiB "
                        "(every GPU) or 0=40GiB,1=70GiB,cpu=100GiB")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def cmd_capture(a):
    import hooks
    from interp.capture import capture
    from interp.models import tokenize_text
    model, kind, ctx = _load_scaled(a)
    if (a.task is None) == (a.text is None):
        raise InterpError("give exactly one of --task or --text")
    if a.task:
        from interp import tasks as T
        tokens = T.generate(a.task, a.n, seed=a.seed, **_kv(a.knob)).tokens
        source = {"task": a.task, "n": a.n, "seed": a.seed, "knobs": _kv(a.knob)}
    else:
        tokens = tokenize_text(a.text, a.model, kind, a.seq_len)
        source = {"text": a.text, "seq_len": a.seq_len}
    names = a.names.split(",") if a.names else None
    hm = hooks.wrap(model)
    if names is None:
        names = [n for n in hm.hook_names if n.endswith(("resid_post", "rec.state"))]
    from hooks.names import check
    check(names, hm.hook_names)
    positions = [int(p) for p in a.positions.split(",")] if a.positions else None
    if positions:
        bad = [p for p in positions if not 0 <= p < tokens.shape[1]]
        if bad:
            raise InterpError(f"position {bad[0]} out of range 0..{tokens.shape[1] - 1}")
    if ctx is not None:
        from interp import distributed
        out = distributed.capture(model, tokens, names, a.out, ctx=ctx, positions=positions, max_memory=a.max_memory,
                                  batch_size=a.batch_size, meta={"model": a.model, **source},
                                  state_dtype=a.state_dtype)
        if not ctx.is_main:
            return
    else:
        out = capture(model, tokens, names, a.out, positions=positions, max_memory=a.max_memory,
                      batch_size=a.batch_size, meta={"model": a.model, **source}, state_dtype=a.state_dtype)
    procs = f", {ctx.world_size} processes" if ctx is not None and ctx.distributed else ""
    print(f"wrote {out}/manifest.json ({tokens.shape[0]} examples, {len(names)} names{procs})")


def cmd_probe(a):
    from interp.probes import cli_run
    cli_run(a, _load_any, _kv)


def _positions(spec, what="--positions"):
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


def cmd_patch(a):
    from pathlib import Path
    import hashlib
    import hooks
    from interp import patching, tasks as T
    model, _, ctx = _load_scaled(a)
    hm = hooks.wrap(model)
    knobs = _kv(a.knob)
    pairs = T.make_pairs(a.task, a.n, seed=a.seed, **knobs)
    layers = None
    if a.layer is not None:
        layers = [int(x) for x in _positions(a.layer, "--layer")]
        for i in layers:
            if not 0 <= i < hm.n_layers:
                raise InterpError(f"layer {i} out of range 0..{hm.n_layers - 1}")
    if a.metric not in patching.METRICS:
        raise InterpError(f"metric '{a.metric}' is not valid; valid: {', '.join(patching.METRICS)}")
    sites = a.site
    if not sites:
        if layers is None:
            sites = ["resid_pre"]
        else:  # every site the chosen layer(s) have
            have = {n.split(".", 2)[2] for n in hm.hook_names if n.startswith("blocks.")
                    and int(n.split(".")[1]) in layers}
            sites = [s for s in patching.SITES if s in have and s != "attn.pattern"]
    positions = _positions(a.positions)
    name = f"{Path(a.model).name}_{a.task}" + (f"_L{'-'.join(map(str, layers))}" if layers else "")
    out = Path(a.out)
    spec = json.dumps([a.model, a.task, knobs, a.n, a.seed, layers, sites, positions, a.heads, a.direction])
    units = out / ".units" / (name + "-" + hashlib.sha1(spec.encode()).hexdigest()[:10])
    kw = dict(sites=sites, layers=layers, positions=positions, heads=a.heads, direction=a.direction,
              batch_size=a.batch_size, model_name=Path(a.model).name)
    from interp import distributed  # --distributed: each rank runs its share into units/rank<r>/, rank 0 merges
    res = distributed.sweep(hm, pairs, out=units, ctx=ctx or distributed.Context(), **kw)
    if ctx is not None and not ctx.is_main:
        return
    b = res.attrs["baselines"]
    print(f"{a.model} on {a.task} ({a.n} pairs, {a.direction}): logit diff clean {b['clean_logit_diff']:.3f}, "
          f"corrupted {b['corrupted_logit_diff']:.3f}; p(clean answer) clean {b['clean_prob']:.3f}, "
          f"corrupted {b['corrupted_prob']:.3f}")
    print(res.ranked(a.metric, k=a.top).round(4).to_string(index=False))
    if a.attribution:
        att = patching.attribution(hm, pairs, sites=[s for s in sites if s not in ("rec.state", "attn.pattern")],
                                   layers=layers, model_name=Path(a.model).name)
        m = res.merge(att[["site", "layer", "position", "head", "logit_diff"]],
                      on=["site", "layer", "position", "head"], suffixes=("", "_attribution"))
        print(f"attribution patching vs exact (normalised logit diff): Pearson r = "
              f"{m.logit_diff.corr(m.logit_diff_attribution):.3f} over {len(m)} cells")
        m.to_csv(out / f"{name}_attribution.csv", index=False)
    out.mkdir(parents=True, exist_ok=True)
    res.to_csv(out / f"{name}.csv", index=False)
    res.to_parquet(out / f"{name}.parquet", index=False)
    res.plot(out / f"{name}.png", metric=a.metric)
    print(f"wrote {out}/{name}.csv, .parquet, .png")


def cmd_run(a):
    """``interp run experiments/<name>.toml [flags]``: the experiment script's exit code."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent        # experiments/ lives next to interp/ in a checkout
    if not (root / "experiments" / "_common.py").is_file():
        raise InterpError(f"no experiments/ directory next to the interp package ({root}); `interp run` needs the "
                          "source checkout")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from experiments._common import run_toml
    return run_toml(a.file, a.args)


def build_parser() -> argparse.ArgumentParser:
    from interp.tasks import TASKS
    from interp.zoo.layouts import preset_names
    p = argparse.ArgumentParser(prog="interp", description="hybrid-interp: where recall and state "
                                "tracking live inside hybrid (attention + recurrence) models")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a zoo model on a task mixture")
    t.add_argument("--layout", default="gdn75", help=f"preset ({', '.join(preset_names()[:6])}, ...) "
                   "or a comma-separated list of mixers")
    t.add_argument("--task", action="append", default=None, help=f"task (repeatable); one of {', '.join(TASKS)}")
    t.add_argument("--out", required=True, help="output directory (resumes if it holds a checkpoint)")
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--n-layers", type=int, default=12)
    t.add_argument("--n-heads", type=int, default=4)
    t.add_argument("--head-dim", type=int, default=32)
    t.add_argument("--neg-eig", action="store_true", help="GDN with negative eigenvalues (beta in (0,2))")
    t.add_argument("--match-params", metavar="LAYOUT", help="size the MLP so the parameter count matches LAYOUT's")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--induction-steps", type=int, default=None, metavar="N",
                   help="warm up on short induction sequences for at most the first N steps, before the task "
                        "mixture (a softmax transformer does not form its recall circuit from the tasks' "
                        "answer-only loss in budget otherwise; see interp.train); default min(2000, steps/4) for "
                        "layouts with attention, 0 (off) for attention-free ones")
    t.add_argument("--induction-until", type=float, default=0.9, metavar="ACC",
                   help="end the warm-up early once held-out induction accuracy reaches ACC (default 0.9)")
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--scan-backend", default="auto", choices=["auto", "reference"],
                   help="recurrent scans: fla kernels on CUDA (auto) or the pure-torch reference everywhere")
    t.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop early and save (0 = none)")
    t.add_argument("--no-resume", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy against each difficulty knob")
    e.add_argument("--model", action="append", required=True, help="model directory or default name (repeatable)")
    e.add_argument("--task", action="append", default=None)
    e.add_argument("--knob", action="append", default=None, help="only these knobs")
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--seed", type=int, default=123)
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="CSV path")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("capture", help="save activations / recurrent states (safetensors + JSON manifest)")
    c.add_argument("--model", default="gdn75", help="default model name, zoo dir or local HF checkpoint dir")
    c.add_argument("--task", help="generate inputs from this task")
    c.add_argument("--knob", action="append", help="task knob KNOB=VALUE (repeatable)")
    c.add_argument("--n", type=int, default=64, help="examples (with --task)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--text", help="a text file instead of a task")
    c.add_argument("--seq-len", type=int, default=128, help="window length for --text")
    c.add_argument("--names", help="comma-separated hook names (default: every resid_post and rec.state)")
    c.add_argument("--positions", help="comma-separated token positions to keep (default: all)")
    c.add_argument("--max-memory", default="1GB", help="flush a shard to disk once this much is held")
    c.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype rec.state tensors are stored in (bfloat16/float16: half the bytes, rounded once "
                        "from float32)")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--device", default="cpu")
    c.add_argument("--out", required=True)
    _scale_args(c)
    c.set_defaults(func=cmd_capture)

    pr = sub.add_parser("probe", help="layer-wise linear probes with control tasks and selectivity")
    pr.add_argument("--model", action="append", default=None, help="model dir or default name (repeatable; "
                    "default: transformer, gdn75, gdn100)")
    pr.add_argument("--task", default="state_recall")
    pr.add_argument("--target", default="var_value[0]", help="per-token label, or name[j] for a column")
    pr.add_argument("--site", action="append", default=None,
                    help="resid_post (default), resid_pre, resid_mid, mixer_out, mlp_out, attn.head_out, "
                         "attn.head_out.per_head, rec.state, rec.readout, rec.state@key, rec.state@query (repeatable)")
    pr.add_argument("--knob", action="append", help="task knob KNOB=VALUE (repeatable)")
    pr.add_argument("--sweep", default=None, help="load sweep KNOB=V1,V2,... (one knob), e.g. n_pairs=2,4,8")
    pr.add_argument("--n", type=int, default=256, help="examples per seed and load (split 80/20 by example)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--seeds", default=None, help="comma-separated seeds (data, split, control); 95%% CI over them")
    pr.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (sklearn's C)")
    pr.add_argument("--backend", default="torch", help="torch (batched, GPU if present) or sklearn")
    pr.add_argument("--device", default="cpu", help="where the models run")
    pr.add_argument("--out", default="figures/probe")
    pr.add_argument("--units", default="runs/probe_units", help="finished units, for resuming (under .units/)")
    pr.set_defaults(func=cmd_probe)

    pa = sub.add_parser("patch", help="activation patching: layer x position (or every site of --layer) heatmaps")
    pa.add_argument("--model", default="gdn75", help="default model name, zoo dir or local HF checkpoint dir")
    pa.add_argument("--task", default="mqar")
    pa.add_argument("--knob", action="append", help="task knob KNOB=VALUE (repeatable)")
    pa.add_argument("--layer", help="patch every site of this layer (or comma list); default: resid_pre of every layer")
    pa.add_argument("--site", action="append", help="hook site without the block prefix, e.g. resid_pre, "
                    "mixer_out, attn.head_out, rec.state (repeatable)")
    pa.add_argument("--positions", default="all", help="all (default), 3,5,9 or 0:30")
    pa.add_argument("--heads", action="store_true", help="one cell per head (head sites)")
    pa.add_argument("--metric", default="logit_diff", help="logit_diff (normalised), prob or kl: ranks and colours")
    pa.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    pa.add_argument("--attribution", action="store_true", help="also run attribution patching and compare")
    pa.add_argument("--n", type=int, default=64, help="prompt pairs")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--top", type=int, default=15, help="rows of the ranked table")
    pa.add_argument("--batch-size", type=int, default=256, help="rows per forward pass (pairs x cells)")
    pa.add_argument("--device", default="cpu")
    pa.add_argument("--out", default="figures/patch")
    _scale_args(pa)
    pa.set_defaults(func=cmd_patch)

    d = sub.add_parser("demo", help="evaluate the shipped default models; write figures and a report")
    d.add_argument("--out", default="figures/demo")
    d.add_argument("--n", type=int, default=96, help="examples per difficulty point")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="run an experiment from its TOML file (experiments/<name>.toml)")
    r.add_argument("file", help="experiments/<name>.toml (script = ..., [options] = the script's flags)")
    r.add_argument("args", nargs=argparse.REMAINDER, help="more flags for the script, e.g. --quick")
    r.set_defaults(func=cmd_run)
    return p


def main(argv=None) -> int:
    from interp.tasks import TaskError
    from hooks.names import HookNameError
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "task", "x") is None and args.cmd == "train":
            args.task = ["mqar", "state_recall"]
        if args.cmd == "probe":
            args.model = args.model or ["transformer", "gdn75", "gdn100"]
            args.site = args.site or ["resid_post"]
        rc = args.func(args)
    except (InterpError, TaskError, HookNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if "interp.distributed" in sys.modules:  # leave a torchrun process group cleanly
            sys.modules["interp.distributed"].shutdown()
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
