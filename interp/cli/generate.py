"""`interp generate`: continue text prompts (greedy or sampled, `hooks.generate`), or write a task's chains of
thought with the model's own values (closed loop) and majority-vote over sampled chains (`interp.voting`)."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.kernels import kernel_spec
from interp.cli.options import (MODEL_HELP, add_device, add_knob, add_n, add_seed, finite_float, int_at_least, kv,
                                refuse_unused)


def add_parser(sub):
    c = sub.add_parser("generate", help="continue prompts (greedy or sampled) under the model's own decoding, or "
                       "vote over sampled chains of thought of a task")
    c.add_argument("--model", default="gdn75", help=MODEL_HELP)
    src = c.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", default=None,
                     help="a text prompt (repeatable; prompts of one token length; zoo models read the task "
                          "vocabulary's words, e.g. '<bos> x0 = 3 ; ? x0')")
    src.add_argument("--task", default=None,
                     help="a chain-of-thought task: its fixed tokens are kept, every derived value after 'is' and "
                          "the answer are the model's (default: state_recall with cot=true)")
    add_knob(c, help="task knob KNOB=VALUE (repeatable, with --task; cot=true is always set)")
    add_n(c, None, help="task examples (with --task; default 64)")
    c.add_argument("--max-new", type=int_at_least(1), default=None, help="tokens to generate per --prompt (default 16)")
    c.add_argument("--samples", type=int_at_least(1), default=1,
                   help="sampled continuations per prompt / sampled chains per task example (majority vote over "
                        "them; 1 = greedy only)")
    c.add_argument("--temperature", type=finite_float(0.0, above=True), default=0.8)
    c.add_argument("--top-p", type=finite_float(0.0, 1.0, above=True), default=0.9)
    add_seed(c)
    add_device(c)
    c.add_argument("--out", default="runs/generate", help="folder for generations.csv / votes.csv and summary.json")
    c.add_argument("--overwrite", action="store_true", help="replace a result made with other options")
    c.set_defaults(func=cmd_generate)


def _check(a):
    """Each mode's own options (--knob, --n with a task; --max-new with prompts), their defaults; no empty prompt."""
    if a.prompt is None:
        mine, theirs = "--task", [("--max-new", a.max_new)]
        a.task = a.task or ("state_recall" if a.knob else None)
        a.n = 64 if a.n is None else a.n
    else:
        mine, theirs = "--prompt", [("--knob", a.knob), ("--n", a.n)]
        a.max_new = 16 if a.max_new is None else a.max_new
        empty = [p for p in a.prompt if not p.strip()]
        if empty:
            raise InterpError(f"--prompt {empty[0]!r} is empty; valid: a prompt of at least one token")
    refuse_unused(mine, theirs, "--knob and --n with --task, --max-new with --prompt")


def _spec(a, model) -> dict:
    from interp.store import model_digest
    return dict(model={"name": a.model, "digest": model_digest(model)}, prompt=a.prompt, task=a.task,
                knob=sorted(a.knob or []), n=a.n if a.prompt is None else None,
                max_new=a.max_new if a.prompt is not None else None,
                samples=a.samples, temperature=a.temperature, top_p=a.top_p, seed=a.seed, **kernel_spec())


def _prompts(a, model):
    import hooks
    import pandas as pd
    hm = hooks.wrap(model)
    rows = []
    for s in range(a.samples):
        kw = dict(sample=True, temperature=a.temperature, top_p=a.top_p, seed=a.seed + s) if a.samples > 1 else {}
        g = hm.generate(a.prompt, a.max_new, **kw)
        for i, p in enumerate(a.prompt):
            text = g.text[i] if g.text else " ".join(map(str, g.new_tokens[i].tolist()))
            rows.append(dict(prompt=p, sample=s, continuation=text, path=g.path))
            print(f"[{s}] {p} -> {text}")
    return pd.DataFrame(rows), dict(prompts=len(a.prompt), samples=a.samples)


def _chains(a, model):
    import pandas as pd
    from interp import tasks as T
    from interp.closedloop import IS, sample_chains
    from interp.voting import VOTE_NS, chain_vote_rows
    task = a.task or "state_recall"
    batch = T.generate(task, a.n, seed=a.seed, **{**kv(a.knob), "cot": True})
    if not bool((batch.tokens[0] == IS).any()):
        raise InterpError(f"--task {task}: its examples have no 'is' chain-of-thought markers; valid: a task with "
                          "a cot knob (state_recall)")
    greedy = sample_chains(model, batch, 1)
    summary = dict(task=task, n=a.n, closed_loop_acc=greedy["right"].float().mean().item(),
                   chain_acc=greedy["steps_right"].mean().item())
    print(f"{task} (n={a.n}): closed-loop answer accuracy {summary['closed_loop_acc']:.3f}, intermediate values "
          f"right {summary['chain_acc']:.3f}")
    df = pd.DataFrame()
    if a.samples > 1:
        ns = [N for N in VOTE_NS if N <= a.samples] + ([a.samples] if a.samples not in VOTE_NS else [])
        df = pd.DataFrame(chain_vote_rows(model, batch, ns, a.temperature, a.top_p, seed=a.seed))
        for r in df.itertuples():
            print(f"  N={r.N:>3}: majority {r.majority_acc:.3f}  pass@N {r.pass_at_n:.3f}  ({r.groups} groups)")
        summary["votes"] = df.to_dict("records")
    return df, summary


def cmd_generate(a):
    from interp.cli.options import load_any, make_out
    from interp.store import Store, atomic_write_json, save_csv
    _check(a)
    out = make_out(a.out)
    model = load_any(a.model, a.device)
    with Store(out, "generate", _spec(a, model), overwrite=a.overwrite, owns=("generations.csv", "votes.csv",
                                                                               "summary.json")):
        if a.prompt is not None:
            df, summary = _prompts(a, model)
            name = "generations.csv"
        else:
            df, summary = _chains(a, model)
            name = "votes.csv"
        if len(df):
            save_csv(Path(out) / name, df, index=False)
        atomic_write_json(Path(out) / "summary.json", {"model": a.model, **summary})
    print(f"wrote {out}/summary.json" + (f", {out}/{name}" if len(df) else ""))
