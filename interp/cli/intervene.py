"""`interp intervene`: interchange interventions at one site restricted to subspaces (full, random,
the write-key form, a saved basis), IIA printed and written as CSV / parquet / bar chart
(interp.interventions). Also the site and position options `interp das` shares."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

from interp import InterpError
from interp.cli.options import (add_device, add_knob, add_model, add_n, add_seed, check_out, int_at_least, kv,
                                load_any, refuse_unused, seed_list)


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


def _labels(items) -> dict:
    """{--subspace file: its label}: the file's name without .safetensors, or the path without it where two files
    share a name; the same file twice and a built-in name (full, random, write_key) are refused."""
    from interp.interventions.plan import BUILTIN
    files = [s for s in items if s.endswith(".safetensors")]
    seen, out = {}, {}
    for s in files:
        key = Path(s).resolve()
        if key in seen:
            raise InterpError(f"--subspace {s} is given twice (also as {seen[key]}); valid: each file once")
        seen[key] = s
    stems = [Path(s).name[:-len(".safetensors")] for s in files]
    for s, stem in zip(files, stems):
        if stem in BUILTIN:
            raise InterpError(f"--subspace {s}: its name '{stem}' is that of a built-in subspace; valid: a file not "
                              f"named {', '.join(f'{b}.safetensors' for b in BUILTIN)} (rename it)")
        out[s] = stem if stems.count(stem) == 1 else s[:-len(".safetensors")]
    return out


def check_subspace_args(items):
    """--subspace's items (default full, random): built-in names or .safetensors files, each once."""
    from interp.interventions.plan import BUILTIN
    items = items or ["full", "random"]
    for s in items:
        if s not in BUILTIN and not s.endswith(".safetensors"):
            raise InterpError(f"--subspace '{s}' is not valid; valid: {', '.join(BUILTIN)} or a .safetensors file "
                              "with R (e.g. from interp das)")
    twice = [s for s in BUILTIN if items.count(s) > 1]
    if twice:
        raise InterpError(f"--subspace {twice[0]} is given twice; valid: each subspace once")
    _labels(items)
    return items


def _subspaces(items, site, digest: str):
    """--subspace's items; a saved basis must come from this site and (where it records one) the model's weights
    (``digest``, `interp.store.model_digest`), as its file's metadata and the .spec.json beside it record (they
    must agree: `load_subspace`). A basis that records neither (a user's own) is taken with a warning."""
    from interp.interventions import load_subspace
    from interp.store import tensor_digest
    out, files, labels = [], {}, _labels(items)
    for s in items:
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
        _warn_unchecked(s, made)
        out.append({labels[s]: R})
        files[s] = tensor_digest(R)
    return out, files


def _warn_unchecked(s, made: dict):
    """One warning where a basis records no site or no model's weights digest (a user's own basis, or one saved
    through the Python API without a digest): what cannot be checked is taken on trust."""
    import warnings
    miss = [w for k, w in (("site", "site"), ("model_digest", "model weights digest")) if k not in made]
    if not miss:
        return
    against = "--site or the model" if len(miss) == 2 else "--site" if "site" not in made else "the model's weights"
    where = "" if made else " (no metadata in the file, no .spec.json beside it)"
    warnings.warn(f"--subspace {s} records no {' or '.join(miss)}{where}, so it cannot be checked against "
                  f"{against}; using it as given", stacklevel=2)


@contextlib.contextmanager
def tidy_out(out):
    """On an error inside, remove the folders ``out`` (and its parents) that did not exist before, where still
    empty: a refused call (e.g. a DAS run that diverged) leaves no empty --out behind."""
    new = [p for p in [Path(out), *Path(out).parents] if not p.exists()]
    try:
        yield
    except BaseException:
        for p in new:
            try:
                p.rmdir()
            except OSError:
                break
        raise


def one_shot_out(a, digest: str, stem: str, outputs, **settings):
    """`interp.oneshot.one_shot` for the files ``<--out>/<stem>.*`` of intervene and das: ``<stem>.json`` records
    the model's weights (``digest``), the task and ``settings``."""
    from interp.oneshot import one_shot, spec_of
    out = Path(a.out)
    made = spec_of({a.model: digest}, task=a.task, knobs=sorted(a.knob or []), n=a.n, seed=a.seed, site=a.site,
                   head=a.head, side=a.side, positions=a.positions, order=a.order, **settings)
    return one_shot(out / f"{stem}.json", [out / f"{stem}.{ext}" for ext in outputs], made, a.overwrite)


def _check_settings(a, subspaces):
    """--rank/--seeds (random), --write-at/--key-from (write_key): checked always, refused where no subspace uses
    them and they differ from their defaults. Returns (seeds, write_at)."""
    from interp.interventions.intervene import parse_anchor
    seeds = seed_list(a.seeds, "--seeds")
    wa = parse_positions(a.write_at)
    if len(wa) != 1:
        raise InterpError(f"--write-at '{a.write_at}' names {len(wa)} positions; valid: one position, e.g. write")
    if not isinstance(wa[0], int):
        parse_anchor(wa[0], "--write-at")
    if a.key_from not in ("base", "source"):
        raise InterpError(f"--key-from '{a.key_from}' is not valid; valid: base, source")
    for p in parse_positions(a.positions) or []:
        if not isinstance(p, int):
            parse_anchor(p, "--positions")
    if "random" not in subspaces:
        refuse_unused("--subspace without random", [("--rank", a.rank if a.rank != 1 else None),
                                                     ("--seeds", a.seeds if seeds != [0, 1, 2, 3, 4] else None)],
                      "--rank and --seeds with --subspace random")
    if "write_key" not in subspaces:
        refuse_unused("--subspace without write_key", [("--write-at", a.write_at if a.write_at != "write" else None),
                                                        ("--key-from", a.key_from if a.key_from != "base" else None)],
                      "--write-at and --key-from with --subspace write_key")
    return seeds, wa[0]


def cmd_intervene(a):
    from interp import interventions as iv, tasks as T
    from interp.store import model_digest
    check_out(a.out)
    site = site_of(a)
    items = check_subspace_args(a.subspace)
    seeds, wa = _check_settings(a, items)
    if a.order not in iv.ORDERS:
        raise InterpError(f"--order '{a.order}' is not valid; valid: {', '.join(iv.ORDERS)}")
    model = load_any(a.model, device=a.device)
    digest = model_digest(model)
    subspaces, files = _subspaces(items, site, digest)
    pairs = T.make_pairs(a.task, a.n, seed=a.seed, **kv(a.knob)).to(a.device)
    plan = iv.plan_intervene(model, pairs, site, subspaces=subspaces, rank=a.rank, seeds=seeds,
                             positions=parse_positions(a.positions), order=a.order, batch_size=a.batch_size,
                             write_at=wa, key_from=a.key_from)
    if not plan.n_kept:
        raise InterpError(f"none of the {len(plan.ix.ip)} ordered pairs is answered correctly on both prompts, so no "
                          f"IIA can be measured ({a.model} on {a.task}); valid: a model that solves the task, more "
                          "pairs (--n) or easier --knob values")
    stem = out_stem(a.model, a.task, site)
    with tidy_out(a.out), one_shot_out(a, digest, stem, ("csv", "parquet", "png"), subspaces=a.subspace,
                                       subspace_files=files, rank=a.rank, seeds=seeds, write_at=a.write_at,
                                       key_from=a.key_from, batch_size=a.batch_size):
        res = plan.run(Path(a.model).name)
        sp = res.attrs["spec"]
        print(f"{a.model} on {a.task}: {site.label()} at {sp['positions']}, {sp['n_ordered']} ordered pairs "
              f"({a.order}), {sp['n_kept']} answered correctly on both prompts (kept)")
        print(res.summary().drop(columns=["model", "task"]).round(4).to_string(index=False))
        paths = res.save(a.out, stem)
    print("wrote " + ", ".join(str(p) for p in paths))
