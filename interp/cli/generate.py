"""`interp generate`: continue text prompts (greedy or sampled, `hooks.generate`), or write a task's chains of
thought with the model's own values (closed loop) and majority-vote over sampled chains (`interp.voting`)."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.kernels import kernel_spec
from interp.cli.options import (MODEL_HELP, add_device, add_knob, add_n, add_seed, check_out, finite_float,
                                int_at_least, kv, refuse_unused)

MAX_SAMPLES = 1024          # samples per prompt / task example (a vote over more adds nothing)
MAX_CHAINS = 1 << 20        # --n x --samples chains of one task run (each row is held in memory)
STEP_KNOBS = {"n_steps": 1, "hops": 2}    # knob -> its least value that writes a chain-of-thought step


def add_parser(sub):
    c = sub.add_parser("generate", help="continue prompts (greedy or sampled) under the model's own decoding, or "
                       "vote over sampled chains of thought of a task")
    c.add_argument("--model", default="gdn75", help=MODEL_HELP)
    src = c.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", default=None,
                     help="a text prompt (repeatable; prompts of one token length; zoo models read the task "
                          "vocabulary's words, e.g. '<bos> x0 = 3 ; ? x0')")
    src.add_argument("--task", default=None,
                     help="a chain-of-thought task (state_recall, state_recall_cot, multihop): its fixed tokens are "
                          "kept, every derived value after 'is' and the answer are the model's (default: "
                          "state_recall; its cot knob is always set)")
    add_knob(c, help="task knob KNOB=VALUE (repeatable, each knob once, with --task; not cot: it is always set)")
    add_n(c, None, help="task examples (with --task; default 64)")
    c.add_argument("--max-new", type=int_at_least(1), default=None, help="tokens to generate per --prompt (default 16)")
    c.add_argument("--samples", type=int_at_least(1), default=1,
                   help=f"sampled continuations per prompt / sampled chains per task example (majority vote over "
                        f"them; 1 = greedy only; at most {MAX_SAMPLES})")
    c.add_argument("--temperature", type=finite_float(0.0, above=True), default=None,
                   help="sampling temperature (with --samples >= 2; default 0.8)")
    c.add_argument("--top-p", type=finite_float(0.0, 1.0, above=True), default=None,
                   help="nucleus mass (with --samples >= 2; default 0.9)")
    add_seed(c, None, help="random seed (default 0): the task's examples and the samples")
    add_device(c)
    c.add_argument("--out", default="runs/generate", help="folder for generations.csv / votes.csv and summary.json")
    c.add_argument("--overwrite", action="store_true", help="replace a result made with other options")
    c.set_defaults(func=cmd_generate)


def _check(a):
    """Each mode's own options (--knob, --n with a task; --max-new with prompts; the sampling options with
    --samples >= 2), their defaults and bounds; no empty prompt."""
    from interp.closedloop import check_sampling
    from interp.voting import TEMPERATURE, TOP_P
    if a.prompt is None:
        mine, theirs = "--task", [("--max-new", a.max_new)]
        a.task = a.task or "state_recall"
        a.n = 64 if a.n is None else a.n
    else:
        mine, theirs = "--prompt", [("--knob", a.knob), ("--n", a.n)]
        a.max_new = 16 if a.max_new is None else a.max_new
        empty = [p for p in a.prompt if not p.strip()]
        if empty:
            raise InterpError(f"--prompt {empty[0]!r} is empty; valid: a prompt of at least one token")
    refuse_unused(mine, theirs, "--knob and --n with --task, --max-new with --prompt")
    if a.samples > MAX_SAMPLES:
        raise InterpError(f"--samples {a.samples} is out of range; valid: integers 1..{MAX_SAMPLES}")
    if a.prompt is None and a.n * a.samples > MAX_CHAINS:
        raise InterpError(f"--n {a.n} x --samples {a.samples} = {a.n * a.samples} chains is too many; valid: at most "
                          f"{MAX_CHAINS} chains (fewer examples or samples)")
    if a.samples == 1:    # greedy: a sampling option other than its default would be recorded but do nothing
        unused = [("--temperature", a.temperature, TEMPERATURE), ("--top-p", a.top_p, TOP_P)] \
            + ([("--seed", a.seed, 0)] if a.prompt is not None else [])
        refuse_unused("--samples 1 (greedy decoding)", [(f, v if v not in (None, d) else None) for f, v, d in unused],
                      "--temperature, --top-p" + (", --seed" if a.prompt is not None else "") + " with --samples >= 2")
    a.temperature = TEMPERATURE if a.temperature is None else a.temperature
    a.top_p = TOP_P if a.top_p is None else a.top_p
    a.seed = 0 if a.seed is None else a.seed
    check_sampling(a.temperature, a.top_p, ("--temperature", "--top-p"))


def _has_steps(batch) -> bool:
    from interp.closedloop import IS
    return bool((batch.tokens == IS).any())


def cot_tasks() -> list:
    """The tasks whose examples (at their default knobs, cot set where a knob) have 'is' chain-of-thought steps."""
    from interp import tasks as T
    out = []
    for t in sorted(T.TASKS):
        try:
            if _has_steps(T.generate(t, 1, **({"cot": True} if "cot" in T.knobs(t) else {}))):
                out.append(t)
        except (T.TaskError, InterpError):
            pass
    return out


def _task_batch(a):
    """The task's examples with cot set (where it is a knob), checked: a chain-of-thought task, knobs known, once
    each, never cot, and at least one step (the knob that removed them named)."""
    from interp import tasks as T
    task = a.task
    kn = T.knobs(task)                 # an unknown task: its TaskError names the valid ones
    cot = {"cot": True} if "cot" in kn else {}
    if not _has_steps(T.generate(task, 1, seed=0, **cot)):
        raise InterpError(f"--task {task} has no chain-of-thought form (no 'is' steps); valid: "
                          f"{', '.join(cot_tasks())}")
    knobs = kv(a.knob)
    if "cot" in knobs:
        other = ", ".join(k for k in kn if k != "cot") or "none"
        raw = next(k for k in a.knob if k.split("=", 1)[0] == "cot")
        raise InterpError(f"--knob {raw} is not valid: interp generate always writes the chains of "
                          f"thought (cot is set for {task}); valid: its other knobs ({other})")
    batch = T.generate(task, a.n, seed=a.seed, **knobs, **cot)
    if not _has_steps(batch):
        step = [k for k in STEP_KNOBS if k in batch.meta["knobs"]]
        hint = ", ".join(f"{k} >= {STEP_KNOBS[k]} (of {kn[k].valid})" for k in step) or "knobs that give a step"
        got = ", ".join(f"{k}={batch.meta['knobs'][k]!r}" for k in step)
        raise InterpError(f"--task {task}{' with ' + got if got else ''} writes no chain-of-thought step; "
                          f"valid: {hint}")
    return batch


def _spec(a, model) -> dict:
    """What the result depends on: the model's weights, the prompts or the task (resolved) with its knobs other
    than their defaults (`interp.tasks.spec_knobs`; as typed), the decoding options."""
    from interp.store import model_digest
    from interp.tasks import spec_knobs
    kept = spec_knobs(a.task, kv(a.knob)) if a.task else {}
    return dict(model={"name": a.model, "digest": model_digest(model)}, prompt=a.prompt, task=a.task,
                knob=sorted(k for k in a.knob or [] if k.split("=", 1)[0] in kept),
                n=a.n if a.prompt is None else None, max_new=a.max_new if a.prompt is not None else None,
                samples=a.samples, temperature=a.temperature, top_p=a.top_p, seed=a.seed, **kernel_spec())


def _check_prompts(a, model):
    """The prompts tokenize with the model's tokenizer, to ids it embeds (before anything is written)."""
    import hooks
    from hooks.names import HookError
    hm = hooks.wrap(model)
    if hm.tokenizer is None:
        raise InterpError(f"--prompt needs a tokenizer and --model {a.model} has none; valid: a model with one (a zoo "
                          "model reads the task vocabulary's words; an HF checkpoint saved with its tokenizer), or "
                          "--task for a task's chains of thought")
    try:
        hm.to_tokens(a.prompt)
    except HookError as e:
        valid = "" if "valid" in str(e) else "; valid: prompts the model's tokenizer reads, to ids it embeds"
        raise InterpError(f"--prompt: {e}{valid}") from None


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


def _chains(a, model, batch):
    import pandas as pd
    from interp.closedloop import sample_chains
    from interp.voting import VOTE_NS, chain_vote_rows
    task = a.task
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
    from interp.closedloop import check_vocab
    from interp.store import Store, atomic_write_json, save_csv
    _check(a)
    check_out(a.out)
    batch = _task_batch(a) if a.prompt is None else None
    model = load_any(a.model, a.device)
    if batch is None:
        _check_prompts(a, model)
    else:
        check_vocab(model, batch.tokens, f"--task {a.task}")
    out = make_out(a.out)        # only now, with every input checked
    with Store(out, "generate", _spec(a, model), overwrite=a.overwrite, owns=("generations.csv", "votes.csv",
                                                                               "summary.json")):
        if a.prompt is not None:
            df, summary = _prompts(a, model)
            name = "generations.csv"
        else:
            df, summary = _chains(a, model, batch)
            name = "votes.csv"
        if len(df):
            save_csv(Path(out) / name, df, index=False)
        atomic_write_json(Path(out) / "summary.json", {"model": a.model, **summary})
    print(f"wrote {out}/summary.json" + (f", {out}/{name}" if len(df) else ""))
