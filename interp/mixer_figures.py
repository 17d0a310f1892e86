"""Figures of a zoo study across recurrent mixers and attention shares: accuracy against the
attention percentage, knob sweeps per (task, mixer) with the range beyond training shaded, recall
against model width, majority-vote curves, attention placement, and wrong answers by error type.

They read tidy frames with one row per arm and point: ``arm``, ``mixer`` (``transformer``, ``gdn``,
``gla``, ``mamba2``), ``attn_pct``, ``group`` (``main``: the mixer x attention-share grid and the
transformer; ``width`` / ``placement``: extra arms), ``width``, and the measured columns (``task``,
``knob``, ``value``, ``accuracy``, ``in_training``; ``N``, ``majority_acc``, ``pass_at_n``; ``kind``,
``count``, ``n``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp.experiment.report import pyplot, save_figure
from interp.tasks import word_problems as W
from interp.tasks.vocab import VOCAB
from interp.zoo import ZooConfig

MIXER_COLOR = {"gdn": "C1", "gla": "C2", "mamba2": "C3", "transformer": "C0"}


def plot_attention(acc, path):
    """Accuracy against the attention percentage of the main arms: one panel per task at its default
    knobs and one for mqar at 32 pairs, one line per recurrent mixer, the transformer a star."""
    plt = pyplot()
    main = acc[(acc.group == "main") & (acc.knob == "default")]
    mq = acc[(acc.group == "main") & (acc.task == "mqar") & (acc.value == "32")].assign(task="mqar (32 pairs)")
    d = pd.concat([main, mq])
    panels = list(dict.fromkeys(d.task))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, t in zip(axes[0], panels):
        sub = d[d.task == t]
        tr = sub[sub.mixer == "transformer"]
        for mixer, g in sub[sub.mixer != "transformer"].groupby("mixer", sort=False):
            g = g.sort_values("attn_pct")
            ax.plot(g.attn_pct, g.accuracy, marker="o", color=MIXER_COLOR[mixer], label=mixer)
        if len(tr):
            ax.plot(tr.attn_pct, tr.accuracy, marker="*", ms=12, ls="none", color=MIXER_COLOR["transformer"],
                    label="transformer")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("attention layers (%)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("answer accuracy")
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, path, 110)


def _task_by_mixer(df):
    """A figure with one panel per (task, recurrent mixer) of the main arms; returns it and the
    panels (axis, task, mixer, the rows of that mixer's models and the transformer)."""
    plt = pyplot()
    main = df[df.group == "main"]
    tasks = list(dict.fromkeys(main.task))
    mixers = [m for m in MIXER_COLOR if m != "transformer" and m in set(main.mixer)]
    fig, axes = plt.subplots(len(tasks), len(mixers), figsize=(4 * len(mixers), 3.1 * len(tasks)), squeeze=False)
    panels = [(axes[i, j], t, m, main[(main.task == t) & main.mixer.isin([m, "transformer"])])
              for i, t in enumerate(tasks) for j, m in enumerate(mixers)]
    return fig, panels


def plot_sweeps(acc, path):
    """Accuracy along each task's sweep knob per (task, mixer); the values beyond training shaded."""
    fig, panels = _task_by_mixer(acc[acc.knob != "default"])
    for ax, t, mixer, sub in panels:
        for arm, g in sub.groupby("arm", sort=False):
            ax.plot(g.value.astype(str), g.accuracy, marker="o", label=f"{arm} ({g.attn_pct.iloc[0]}% attn)",
                    color="C0" if arm == "transformer" else None, ls=":" if arm == "transformer" else "-")
        out = sub[~sub.in_training.astype(bool)]
        if len(out):
            xs = list(dict.fromkeys(sub.value.astype(str)))
            first = xs.index(str(out.value.iloc[0]))
            ax.axvspan(first - 0.5, len(xs) - 0.5, color="gray", alpha=0.12, lw=0)
        ax.set_title(f"{t}: {mixer}", fontsize=9)
        ax.set_xlabel(sub.knob.iloc[0] if len(sub) else "")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save_figure(fig, path, 100)


def plot_width(acc, path):
    """mqar accuracy against the number of pairs at each width of the width arms (``<arch>-d<width>``
    and ``<arch>``); False if there are none."""
    plt = pyplot()
    d = acc[(acc.task == "mqar") & (acc.knob == "n_pairs")]
    archs = sorted({a.split("-d")[0] for a in d[d.group == "width"].arm})
    if not archs:
        return False
    fig, axes = plt.subplots(1, len(archs), figsize=(4.4 * len(archs), 3.4), squeeze=False)
    for ax, a in zip(axes[0], archs):
        sub = d[(d.arm == a) | d.arm.str.startswith(f"{a}-d")]
        for w, g in sorted(sub.groupby("width"), key=lambda x: x[0]):
            ax.plot(g.value.astype(str), g.accuracy, marker="o", label=f"d={w}")
        ax.set_title(f"mqar: {a}, widths", fontsize=10)
        ax.set_xlabel("n_pairs")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("answer accuracy")
    save_figure(fig, path, 110)
    return True


def plot_votes(votes, path):
    """Majority-vote accuracy (solid) and pass@N (dotted) against N per (task, mixer); a task whose rows have
    ``kind`` "chain" (votes over sampled chains of thought) is titled so, the others as single-answer votes."""
    fig, panels = _task_by_mixer(votes)
    for ax, t, mixer, sub in panels:
        what = "sampled chains" if "kind" in sub and (sub.kind == "chain").any() else "single answers"
        for k, (arm, g) in enumerate(sub.groupby("arm", sort=False)):
            c = "C0" if arm == "transformer" else f"C{k + 1}"
            ax.plot(g.N, g.majority_acc, marker="o", color=c, label=f"{arm} ({g.attn_pct.iloc[0]}%)")
            ax.plot(g.N, g.pass_at_n, ls=":", color=c, lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{t}, {what}: {mixer}\n(solid: majority, dotted: pass@N)", fontsize=8)
        ax.set_xlabel("N samples")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save_figure(fig, path, 100)


def plot_placement(acc, arms_, path, preset: str = "gdn83"):
    """Accuracy per task of the ``preset`` arm next to the placement arms (group "placement") of
    ``arms_`` ({arm: spec with "group" and "model"}); False if none was evaluated."""
    plt = pyplot()
    names = [a for a, s in arms_.items() if s["group"] == "placement"]
    names = [a for a in arms_ if a.startswith(preset)] + names
    d = acc[acc.arm.isin(names) & (acc.knob == "default")]
    if d.empty:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.4))
    tasks = list(dict.fromkeys(d.task))
    present = [a for a in names if a in set(d.arm)]
    w = 0.8 / max(1, len(present))
    for k, a in enumerate(present):
        g = d[d.arm == a].set_index("task").reindex(tasks)
        layers = ZooConfig(vocab_size=len(VOCAB), **arms_[a]["model"]).attention_layers
        ax.bar(np.arange(len(tasks)) + k * w, g.accuracy, w, label=f"{a}: attention at {layers}")
    ax.set_xticks(np.arange(len(tasks)) + w * (len(present) - 1) / 2, tasks)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("answer accuracy")
    ax.set_title("attention placement (83% recurrent)", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path, 110)
    return True


def plot_taxonomy(tax, path):
    """Stacked fractions of the problems per error type (`W.ERROR_TYPES`), one panel per mixer with
    the main arms by attention percentage."""
    plt = pyplot()
    d = tax[tax.group == "main"]
    mixers = [m for m in MIXER_COLOR if m != "transformer" and m in set(d.mixer)]
    fig, axes = plt.subplots(1, len(mixers), figsize=(4.6 * len(mixers), 3.6), squeeze=False, sharey=True)
    for ax, mixer in zip(axes[0], mixers):
        sub = d[d.mixer.isin([mixer, "transformer"])]
        arms_ = sub.drop_duplicates("arm").sort_values("attn_pct")
        x = np.arange(len(arms_))
        bottom = np.zeros(len(arms_))
        for k, kind in enumerate(W.ERROR_TYPES):
            v = np.array([sub[(sub.arm == a) & (sub.kind == kind)].eval("count / n").sum() for a in arms_.arm])
            ax.bar(x, v, 0.7, bottom=bottom, label=kind, color=f"C{k}")
            bottom += v
        ax.set_xticks(x, [f"{a}\n{p}%" for a, p in zip(arms_.arm, arms_.attn_pct)], fontsize=7)
        ax.set_title(f"wrong answers by type: {mixer}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("fraction of problems")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path, 110)
