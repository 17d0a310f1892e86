"""Small CPU evidence for the trainer's induction warm-up (interp.train, `induction_steps`).

Trains small zoo models (default 4 layers, d=64) on the shipped mixture (mqar + state_recall, one
grid knob a batch, lr 3e-3, 200 warm-up steps of the lr) with and without the induction warm-up, and
writes the held-out accuracy curves (step, layout, warm-up, task, accuracy) as a tidy CSV and a
figure. Each arm is one `interp.train.train` run under --out/<arm> (resumable; a finished arm is
read back, not retrained).

    python bench/induction_warmup_cpu.py                       # ~25 min on 2 cores
    python bench/induction_warmup_cpu.py --layouts transformer --steps 1500   # quicker

Measured (4 layers, d=64, batch 32, 3000 steps): see BENCHMARKS.md / the report of this change.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _arm(args: dict) -> str:
    import torch
    from interp.train import TrainConfig, train
    torch.set_num_threads(1)
    out = Path(args["out"])
    if not (out / "meta.json").is_file():
        cfg = TrainConfig(out=str(out), model=args["model"], tasks=["mqar", "state_recall"], steps=args["steps"],
                          batch_size=args["batch_size"], lr=args["lr"], warmup=200,
                          induction_steps=args["induction_steps"], eval_every=args["eval_every"],
                          save_every=args["eval_every"], seed=args["seed"], device="cpu", scan_backend="reference")
        train(cfg, progress=False)
    return str(out)


def collect(root: Path, arms: list[dict]):
    import pandas as pd
    from interp.train import read_log
    rows = []
    for a in arms:
        log = Path(a["out"]) / "train_log.jsonl"
        if not log.is_file():
            continue
        for r in read_log(log):
            for k, v in r.items():
                if k.startswith("acc/"):
                    rows.append({"layout": a["model"]["layout"], "induction_steps": a["induction_steps"],
                                 "step": r["step"], "task": k[4:], "accuracy": v})
    df = pd.DataFrame(rows)
    return df


def plot(df, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = ["mqar", "state_recall"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), sharey=True)
    for ax, t in zip(axes, tasks):
        for (layout, ind), g in df[df.task == t].groupby(["layout", "induction_steps"]):
            ax.plot(g.step, g.accuracy, ls="-" if ind else "--", marker=".",
                    label=f"{layout}, {'warm-up' if ind else 'no warm-up'}")
        ax.set(title=f"held-out {t}", xlabel="step", ylim=(0, 1.02))
    axes[0].set_ylabel("answer accuracy")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/induction_warmup_cpu")
    p.add_argument("--figures", default="figures/induction_warmup")
    p.add_argument("--layouts", default="transformer,gdn75,gdn100")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--induction-steps", type=int, default=1500, help="warm-up cap of the 'with' arms")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    root, figs = Path(a.out), Path(a.figures)
    figs.mkdir(parents=True, exist_ok=True)
    arms = []
    for layout in a.layouts.split(","):
        for ind in (0, a.induction_steps):
            model = dict(d_model=a.d_model, n_layers=a.n_layers, layout=layout, n_heads=2, head_dim=32)
            arms.append(dict(out=str(root / f"{layout}_ind{ind}"), model=model, steps=a.steps, batch_size=a.batch_size,
                             lr=a.lr, induction_steps=ind, eval_every=a.eval_every, seed=a.seed))
    from tqdm.auto import tqdm
    with ProcessPoolExecutor(a.jobs) as ex:
        for done in tqdm(ex.map(_arm, arms), total=len(arms), desc="arms"):
            df = collect(root, arms)  # incremental: the table holds every arm finished so far
            df.to_csv(figs / "curves.csv", index=False)
    df = collect(root, arms)
    df.to_csv(figs / "curves.csv", index=False)
    plot(df, figs / "curves.png")
    done_at = {Path(x["out"]).name: json.loads((Path(x["out"]) / "meta.json").read_text()).get("induction_done_at")
               for x in arms}
    last = df[df.step == df.step.max()].pivot_table(index=["layout", "induction_steps"], columns="task",
                                                     values="accuracy")
    print(last.to_string())
    print("warm-up ended at:", done_at)
    print(f"wrote {figs}/curves.csv, {figs}/curves.png")


if __name__ == "__main__":
    main()
