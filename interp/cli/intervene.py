"""`interp intervene`: interchange interventions at one site restricted to subspaces (full, random,
the write-key form, a saved basis), IIA printed and written as CSV / parquet / bar chart
(interp.interventions). Also the site and position options `interp das` shares."""
from __future__ import annotations

import re
from pathlib import Path

from interp import InterpError
from interp.cli.options import (add_device, add_knob, add_model, add_n, add_seed, int_at_least, kv, load_any,
                                seed_list)


def add_site_args(p):
    """--site/--head/--side/--positions/--order and --overwrite, shared with `interp das`."""
    p.add_argument("--site", required=True, help="full hook name, e.g. blocks.0.rec.state, blocks.7.resid_pre, "
                   "blocks.3.attn.head_out")
    p.add_argument("--head", type=int, default=None, help="one head of a per-head site (default: all heads "
                   "concatenated)")
    p.add_argument("--side", default=None, help="rec.state only: key (default) or value, the side of the state "
                   "[K, V] the subspace acts on")
    p.add_argument("--positions", default=None, help="comma list of positions: integers, answer, write, or "
                   "either with an offset (answer-1, write+1); default answer (rec.state: answer-1)")
    p.add_argument("--order", default="both", help="base/source order: both (default), corrupted_base, clean_base")
    p.add_argument("--overwrite", action="store_true", help="replace results in --out made with other settings (each "
                   "records them in <stem>.json)")


def parse_positions(spec):
    """'answer-1,7' -> ['answer-1', 7]; None -> None (the site's default)."""
    if spec is None:
        return None
    out = []
    for part in spec.split(","):
        part = part.strip()
        out.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
    return out


def site_of(a):
    from interp.interventions import Site
    return Site(a.site, head=a.head, side=a.side)


def out_stem(model: str, task: str, site, extra: str = "") -> str:
    """'<model dir name>_<task>_<site label>[extra]' with characters unsafe in file names replaced."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", f"{Path(model).name}_{task}_{site.label()}{extra}")


def add_parser(sub):
    pa = sub.add_parser("intervene", help="interchange interventions restricted to a subspace: IIA per subspace")
    add_model(pa)
    pa.add_argument("--task", default="mqar")
    add_knob(pa)
    add_site_args(pa)
    pa.add_argument("--subspace", action="append", default=None,
                    help="full (whole site / head), random (--rank, one per --seeds), write_key (rec.state: rank 1 "
                         "along the fact's write key), or a .safetensors file with R (e.g. from interp das); "
                         "repeatable; default: full and random")
    pa.add_argument("--rank", type=int_at_least(1), default=1, help="rank of the random subspaces")
    pa.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the random subspaces")
    pa.add_argument("--write-at", default="write", help="where the write key is read (a position as in --positions)")
    pa.add_argument("--key-from", default="base", help="write key of the base (default) or source prompt")
    add_n(pa, 256, help="task pairs")
    add_seed(pa)
    pa.add_argument("--batch-size", type=int_at_least(1), default=64)
    add_device(pa)
    pa.add_argument("--out", default="runs/intervene")
    pa.set_defaults(func=cmd_intervene, resumes=False)


def _subspaces(items, site, digest: str):
    """--subspace's items; a saved basis must come from this site and (where it records one) the model's weights
    (``digest``, `interp.store.model_digest`)."""
    from interp.interventions import load_subspace
    from interp.store import tensor_digest
    out, files = [], {}
    for s in items or ["full", "random"]:
        if not s.endswith(".safetensors"):
            out.append(s)
            continue
        R, made = load_subspace(s)
        here = {"site": site.name, "head": site.head, "side": site.side}
        if made.get("model_digest") not in (None, digest):
            here["model_digest"] = digest
        other = [f"{k} {made[k]!r} (here {v!r})" for k, v in here.items() if k in made and made[k] != v]
        if other:
            raise InterpError(f"--subspace {s} was learned at another site or model: {', '.join(other)}; valid: a "
                              "subspace of this --site / --head / --side and model")
        out.append({Path(s).name[:-len(".safetensors")]: R})
        files[s] = tensor_digest(R)
    return out, files


def one_shot_out(a, digest: str, stem: str, outputs, **settings):
    """`interp.oneshot.one_shot` for the files ``<--out>/<stem>.*`` of intervene and das: ``<stem>.json`` records
    the model's weights (``digest``), the task and ``settings``."""
    from interp.oneshot import one_shot, spec_of
    out = Path(a.out)
    made = spec_of({a.model: digest}, task=a.task, knobs=sorted(a.knob or []), n=a.n, seed=a.seed, site=a.site,
                   head=a.head, side=a.side, positions=a.positions, order=a.order, **settings)
    return one_shot(out / f"{stem}.json", [out / f"{stem}.{ext}" for ext in outputs], made, a.overwrite)


def cmd_intervene(a):
    from interp import interventions as iv, tasks as T
    from interp.store import model_digest
    site = site_of(a)
    wa = parse_positions(a.write_at)
    seeds = seed_list(a.seeds, "--seeds")
    model = load_any(a.model, device=a.device)
    digest = model_digest(model)
    subspaces, files = _subspaces(a.subspace, site, digest)
    pairs = T.make_pairs(a.task, a.n, seed=a.seed, **kv(a.knob)).to(a.device)
    stem = out_stem(a.model, a.task, site)
    with one_shot_out(a, digest, stem, ("csv", "parquet", "png"), subspaces=a.subspace, subspace_files=files,
                      rank=a.rank, seeds=seeds, write_at=a.write_at, key_from=a.key_from, batch_size=a.batch_size):
        res = iv.intervene(model, pairs, site, subspaces=subspaces, rank=a.rank, seeds=seeds,
                           positions=parse_positions(a.positions), order=a.order, batch_size=a.batch_size,
                           model_name=Path(a.model).name, write_at=wa[0] if len(wa) == 1 else wa, key_from=a.key_from)
        sp = res.attrs["spec"]
        print(f"{a.model} on {a.task}: {site.label()} at {sp['positions']}, {sp['n_ordered']} ordered pairs "
              f"({a.order}), {sp['n_kept']} answered correctly on both prompts (kept)")
        print(res.summary().drop(columns=["model", "task"]).round(4).to_string(index=False))
        paths = res.save(a.out, stem)
    print("wrote " + ", ".join(str(p) for p in paths))
