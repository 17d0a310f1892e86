"""`interp das`: distributed alignment search at one site; IIA of the learned subspace (train / val /
test) next to random subspaces of the same rank and the full-site patch, written as CSV / parquet / bar
chart, with the learned R (safetensors) and its spec (JSON) (interp.interventions.train_das)."""
from __future__ import annotations

import argparse
from pathlib import Path

from interp import InterpError
from interp.cli.intervene import add_site_args, one_shot_out, out_stem, parse_positions, site_of, tidy_out
from interp.cli.options import (add_device, add_knob, add_model, add_n, add_seed, check_out, finite_float,
                                int_at_least, kv, load_any, seed_list)


def add_parser(sub):
    pa = sub.add_parser("das", help="distributed alignment search: learn a rank-r subspace that maximises IIA")
    add_model(pa)
    pa.add_argument("--task", default="mqar")
    add_knob(pa)
    add_site_args(pa)
    pa.add_argument("--rank", type=int_at_least(1), default=1)
    pa.add_argument("--epochs", type=int_at_least(1), default=20)
    pa.add_argument("--lr", type=finite_float(0, above=True), default=1e-2)
    pa.add_argument("--batch-size", type=int_at_least(1), default=64)
    pa.add_argument("--patience", type=int_at_least(1), default=3,
                    help="epochs without a better val IIA before stopping")
    pa.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions of the task pairs")
    pa.add_argument("--random-seeds", default="0,1,2,3,4", help="seeds of the random-subspace baseline")
    pa.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                    help="on a GPU, replay each full training and evaluation batch from a CUDA graph (fewer "
                         "launches, the eager numbers; on by default, ignored on a CPU; the negated flag runs "
                         "eagerly)")
    add_n(pa, 512, help="task pairs (each gives two ordered pairs with --order both)")
    add_seed(pa)
    add_device(pa)
    pa.add_argument("--out", default="runs/das")
    pa.set_defaults(func=cmd_das, resumes=False)


def _split(spec):
    try:
        return tuple(float(x) for x in spec.split(","))
    except ValueError:
        raise InterpError(f"--split '{spec}' is not valid; expected three fractions, e.g. 0.6,0.2,0.2") from None


def cmd_das(a):
    from dataclasses import asdict

    from interp import interventions as iv, tasks as T
    from interp.interventions.intervene import parse_anchor
    from interp.store import model_digest
    check_out(a.out)
    site = site_of(a)
    positions = parse_positions(a.positions)
    for p in positions or []:
        if not isinstance(p, int):
            parse_anchor(p, "--positions")
    cfg = iv.DASConfig(rank=a.rank, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, patience=a.patience,
                       split=_split(a.split), seed=a.seed,
                       random_seeds=tuple(seed_list(a.random_seeds, "--random-seeds")),
                       order=a.order, positions=positions, cuda_graphs=a.cuda_graphs)
    cfg.check()
    model = load_any(a.model, device=a.device)
    pairs = T.make_pairs(a.task, a.n, seed=a.seed, **kv(a.knob)).to(a.device)
    plan = iv.plan_das(model, pairs, site, config=cfg)      # every check before --out is made
    stem = out_stem(a.model, a.task, site, f"_r{cfg.rank}")
    digest = model_digest(model)
    with tidy_out(a.out), one_shot_out(a, digest, stem, ("csv", "parquet", "png", "safetensors", "spec.json"),
                                       config={k: v for k, v in asdict(cfg).items() if k != "cuda_graphs"}):
        # (CUDA graphs replay the eager step: the same R, and ignored on a CPU; not a setting of the result)
        res = plan.run(Path(a.model).name, progress=True)
        sp = res.attrs["spec"]
        sp["model_digest"] = digest      # in the .spec.json and the .safetensors' own metadata (with site, head,
        # side, width): `interp intervene --subspace` checks it even for the .safetensors copied alone
        print(f"{a.model} on {a.task}: DAS rank {cfg.rank} at {site.label()} (width {sp['width']}), positions "
              f"{sp['config']['positions']}; kept pairs train/val/test {sp['kept']['train']}/{sp['kept']['val']}/"
              f"{sp['kept']['test']}; best epoch {sp['best_epoch']}")
        print(res.summary().drop(columns=["model", "task"]).round(4).to_string(index=False))
        paths = res.save(a.out, stem)
    print("wrote " + ", ".join(str(p) for p in paths))
