"""Counts, for each localisation claim of README's patching table, how many training seeds show it (issue 20).

    python bench/localisation_table.py runs/localisation [--out figures/localisation_seeds]

Reads the sweeps `bench/localisation_seeds.sh` wrote (``<model>@seed<k>_<task>.csv``: both directions,
pairs answered on both prompts, 95% intervals over pairs, trivial cells marked). Per model, task and seed
each claim reads the best non-trivial cell of a site (largest denoising value over positions; "layer k"
claims over that layer's positions) and the noising value at that same cell (necessity: how much of the
clean logit difference is left when only that cell is corrupted; near 0 = necessary). The rule for
"shows it" is fixed here, before looking at the new seeds: a cell "restores" the answer at denoise >= 0.9
with its interval's lower end >= 0.8; "no state matters" is every state cell's denoise <= 0.1; "spread"
is no single cell >= 0.6. A seed whose model answers fewer than half of the pairs correctly on both prompts
(``<name>.json``: pairs kept / asked) did not learn the task: it is shown as "not learned" and left out of
the count and the mean (a rule added after gdn100@seed1, trained for fewer steps, kept 3 of 256 pairs). Writes ``claims.md`` (claim | per seed | seeds showing it | mean [95% t-interval
over seeds] of the claim's number), ``claims.csv`` and ``seeds.png`` (per model, task and seed: the best
denoising value per site and layer over absolute positions: where the written fact's position moves between
pairs, as in mqar, its effect is spread over positions there; the role-aligned paths in ``claims.md`` are not).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from interp.stats import seed_interval, warn_few_seeds
from interp.store import atomic_write_text, save_csv

RESTORE, RESTORE_LO, NONE, SPREAD = 0.9, 0.8, 0.1, 0.6


def best(df, site, kind=None, layer=None):
    """The non-trivial denoising row of ``site`` (``kind``: layer kind; ``layer``: that layer) with the
    largest value, and the noising value of the same cell; None when there is none."""
    d = df[(df.site == site) & (~df.trivial)]
    if kind is not None:
        d = d[d.layer_kind == kind]
    if layer is not None:
        d = d[d.layer == layer]
    den = d[d.direction == "denoise"]
    if den.empty:
        return None
    r = den.loc[den.logit_diff.idxmax()]
    nz = d[(d.direction == "noise") & (d.layer == r.layer) & (d.position == r.position)]
    return dict(value=float(r.logit_diff), lo=float(r.logit_diff_lo), hi=float(r.logit_diff_hi), layer=int(r.layer),
                position=int(r.position), cls=r.position_class, noise=float(nz.logit_diff.iloc[0]) if len(nz) else None)


def restores(b):
    return b is not None and b["value"] >= RESTORE and b["lo"] >= RESTORE_LO


def fmt(b):
    if b is None:
        return "no cell"
    nz = "" if b["noise"] is None else f"; noised {b['noise']:.2f}"
    return f"L{b['layer']} {b['cls']} {b['value']:.2f} [{b['lo']:.2f}, {b['hi']:.2f}]{nz}"


def _attn_restores(df):
    b = best(df, "mixer_out", kind="attn")
    return restores(b), fmt(b), b and b["value"]


def _no_state(df):
    b = best(df, "rec.state")
    return b is not None and b["value"] <= NONE, "max state " + fmt(b), b and b["value"]


def _attn_beats_gdn(df):
    a, g = best(df, "mixer_out", kind="attn"), best(df, "mixer_out", kind="gdn")
    ok = a is not None and g is not None and a["value"] > g["value"]
    return ok, f"attn {fmt(a)} vs gdn {fmt(g)}", a and a["value"]


def _state_share(df):
    b = best(df, "rec.state")
    return b is not None and b["value"] >= 0.3 and b["lo"] > 0, fmt(b), b and b["value"]


def _spread(df):
    b = best(df, "mixer_out")
    return b is not None and b["value"] < SPREAD, "best " + fmt(b), b and b["value"]


def _layer0(site):
    def check(df):
        b = best(df, site, layer=0)
        return restores(b), fmt(b), b and b["value"]
    return check


CLAIMS = [
    ("gdn75", "mqar", "an attention layer's mixer_out at one position restores the answer", _attn_restores),
    ("gdn75", "mqar", "no GDN state restores it (every state cell <= 0.1)", _no_state),
    ("gdn75", "state_recall", "the best mixer_out cell is an attention layer's", _attn_beats_gdn),
    ("gdn75", "state_recall", "a GDN state carries a share (>= 0.3, interval above 0)", _state_share),
    ("transformer", "mqar", "spread: no single mixer_out cell restores >= 0.6", _spread),
    ("transformer", "state_recall", "spread: no single mixer_out cell restores >= 0.6", _spread),
    ("gdn100", "mqar", "GDN layer 0's state restores the answer", _layer0("rec.state")),
    ("gdn100", "mqar", "GDN layer 0's mixer_out restores the answer", _layer0("mixer_out")),
    ("gdn100", "state_recall", "GDN layer 0's state restores the answer", _layer0("rec.state")),
    ("gdn100", "state_recall", "GDN layer 0's mixer_out restores the answer", _layer0("mixer_out")),
]


LEARNED = 0.5


def read_runs(root: Path) -> dict:
    """{(model, seed, task): frame} of every sweep CSV (or parquet) under ``root``; ``frame.attrs['kept']``: the share of
    pairs kept (answered correctly on both prompts), from the sweep's JSON."""
    out = {}
    files = {f.with_suffix(""): f for ext in ("parquet", "csv") for f in sorted(root.glob(f"*@seed*_*.{ext}"))}
    for f in files.values():                     # the CSV where both are there
        m = re.fullmatch(r"(.+)@seed(\d+)_(mqar|state_recall)(_L[0-9_,:-]+)?\.(csv|parquet)", f.name)
        if m:
            df = pd.read_csv(f) if f.suffix == ".csv" else pd.read_parquet(f)
            js = json.loads(f.with_suffix(".json").read_text())
            info = js.get("pairs", {})
            df.attrs["kept"] = info.get("kept", len(df)) / max(1, info.get("n", 1))
            df.attrs["paths"] = js.get("paths", [])
            out[(m.group(1), int(m.group(2)), m.group(3))] = df
    return out


def table(runs: dict) -> pd.DataFrame:
    rows = []
    seeds = sorted({s for _, s, _ in runs})
    for model, task, text, check in CLAIMS:
        row = dict(model=model, task=task, claim=text)
        shown, vals, unlearned = 0, [], 0
        for s in seeds:
            df = runs.get((model, s, task))
            if df is None:
                row[f"seed{s}"] = "not run"
                continue
            if df.attrs.get("kept", 1.0) < LEARNED:
                row[f"seed{s}"] = f"not learned ({df.attrs['kept']:.0%} of pairs answered)"
                unlearned += 1
                continue
            ok, detail, v = check(df)
            shown += bool(ok)
            vals.append(v if v is not None else float("nan"))
            row[f"seed{s}"] = ("yes: " if ok else "no: ") + detail + f" (n={int(df.n.iloc[0])})"
        m, lo, hi = seed_interval(vals)   # normalised logit differences: no bounds
        warn_few_seeds(len(vals), f"{model} {task}: '{text}'")
        row["seeds showing it"] = f"{shown} of {len(vals)}" + (f" ({unlearned} not learned)" if unlearned else "")
        row["mean [95% CI over seeds]"] = f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if len(vals) > 1 else f"{m:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def plot_grid(runs: dict, path: Path):
    """One panel per model x task (rows) and seed (columns): the best non-trivial denoising value over
    positions per site (rows of the panel) and layer (columns); attention layers' labels in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    keys = sorted({(m, t) for m, _, t in runs}, key=lambda k: (["gdn75", "gdn100", "transformer"].index(k[0])
                                                                if k[0] in ("gdn75", "gdn100", "transformer") else 9, k[1]))
    seeds = sorted({s for _, s, _ in runs})
    depth = {}                                                 # model -> layers, from its widest sweep
    for (m, _, _), f in runs.items():
        depth[m] = max(depth.get(m, 0), 1 + int(f.layer.max()))
    fig, axes = plt.subplots(len(keys), len(seeds), figsize=(3.4 * len(seeds) + 1.2, 1.25 * len(keys) + 0.8),
                             squeeze=False, layout="constrained")
    im = None
    for r, (model, task) in enumerate(keys):
        for c, seed in enumerate(seeds):
            ax, df = axes[r, c], runs.get((model, seed, task))
            ax.set_xticks([]), ax.set_yticks([])
            if df is None:
                ax.set_title(f"{model}@seed{seed} {task}: not run", fontsize=7)
                continue
            d = df[(df.direction == "denoise") & (~df.trivial)]
            sites = sorted(d.site.unique())
            n_layers = depth[model]
            layers = list(range(n_layers))                     # layers not swept stay grey
            grid = np.full((len(sites), len(layers)), np.nan)
            for (site, layer), g in d.groupby(["site", "layer"]):
                grid[sites.index(site), layers.index(layer)] = g.logit_diff.max()
            cmap = matplotlib.colormaps["Reds"].copy()
            cmap.set_bad("0.85")
            im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=cmap, aspect="auto")
            kinds = df.drop_duplicates("layer").set_index("layer").layer_kind
            ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
            for lab, layer in zip(ax.get_xticklabels(), layers):
                lab.set_color("red" if kinds.get(layer) == "attn" else "black")
            ax.set_yticks(range(len(sites)), sites if c == 0 else [""] * len(sites), fontsize=6)
            kept = df.attrs.get("kept", 1.0)
            flag = "" if kept >= LEARNED else " (not learned)"
            swept = sorted(df.layer.unique())
            if len(swept) < n_layers:
                flag += f", layer {swept[0]} swept" if len(swept) == 1 else f", layers {swept[0]}-{swept[-1]} swept"
            ax.set_title(f"{model}@seed{seed}, {task}{flag}, n={int(df.n.iloc[0])}", fontsize=7, pad=2)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="best denoising value over non-trivial positions")
    fig.suptitle("Where patching restores the answer, per training seed (layer on x; attention layers in red; grey: "
                 "no such site or not swept)",
                 fontsize=9)
    from interp.store import atomic_save
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="the folder bench/localisation_seeds.sh wrote")
    ap.add_argument("--out", default=None, help="folder for claims.md / claims.csv (default: the root)")
    a = ap.parse_args(argv)
    root = Path(a.root)
    runs = read_runs(root)
    if not runs:
        raise SystemExit(f"no <model>@seed<k>_<task>.csv sweeps in {root}")
    t = table(runs)
    out = Path(a.out or root)
    out.mkdir(parents=True, exist_ok=True)
    save_csv(out / "claims.csv", t, index=False)
    md = "| " + " | ".join(t.columns) + " |\n|" + "---|" * len(t.columns) + "\n"
    md += "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in t.itertuples(index=False))
    md += ("\nPaths by position class (role-aligned: in every pair the positions of one role, e.g. the queried "
           "fact's write position, which moves between mqar pairs; 95% intervals over pairs), from each sweep's JSON:\n\n")
    md += "".join(f"* `{m}@seed{s}` {t} (kept {df.attrs['kept']:.0%}): " + "; ".join(df.attrs.get("paths", [])) + "\n"
                  for (m, s, t), df in sorted(runs.items()))
    atomic_write_text(out / "claims.md", md)
    plot_grid(runs, out / "seeds.png")
    print(md)


if __name__ == "__main__":
    main()
