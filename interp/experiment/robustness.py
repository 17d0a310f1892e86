"""Robustness of trained arms as one difficulty knob rises: failure points, working ranges, degradation from the
easy end, a report table per knob and the verdict that compares two architectures' robustness on two tasks.

Every function reads a results frame with columns ``arm``, ``knob``, ``value`` (grid order) and ``accuracy``
(a seed mean, or one seed's accuracy); `knob_table` also ``lo`` / ``hi`` (its 95% interval over training seeds,
as `interp.experiment.seed_means` gives them).
"""
from __future__ import annotations

import pandas as pd

from interp.experiment.report import pyplot
from interp.experiment.seeds import fmt
from interp.figsave import save_fig


def _rows(res: pd.DataFrame, arm: str, knob: str) -> pd.DataFrame:
    return res[(res.arm == arm) & (res.knob == knob)]


def first_failure(res: pd.DataFrame, arm: str, knob: str, threshold: float):
    """(value, failed): the first value of ``knob`` where ``arm``'s accuracy < threshold, else the
    last value with failed=False."""
    g = _rows(res, arm, knob)
    below = g[g.accuracy < threshold]
    if len(below):
        return below["value"].iloc[0], True
    return g["value"].iloc[-1], False


def working_range(res: pd.DataFrame, arm: str, knob: str, threshold: float) -> int:
    """How many grid values (from the easy end, in order) the arm keeps accuracy >= threshold."""
    ok = (_rows(res, arm, knob).accuracy >= threshold).tolist()
    return ok.index(False) if False in ok else len(ok)


def degradation(res: pd.DataFrame, arm: str, knob: str, n_hard: int = 2) -> dict:
    """``arm``'s accuracy at the easiest value of ``knob`` (``easy``), its mean over the ``n_hard`` hardest values
    (``hard``), ``drop`` = easy - hard, and those hardest values (``values``)."""
    g = _rows(res, arm, knob)
    h = g.iloc[-n_hard:]
    easy, hard = float(g.accuracy.iloc[0]), float(h.accuracy.mean())
    return dict(easy=easy, hard=hard, drop=easy - hard, values=list(h["value"]))


def knob_table(resm: pd.DataFrame, knob: str, arm_order: list, train_values) -> list[str]:
    """Markdown: accuracy vs ``knob`` (rows, grid order) per arm (columns, in ``arm_order``), each cell the mean
    [95% interval] over seeds; values outside ``train_values`` are marked beyond training."""
    sub = resm[resm.knob == knob]
    piv = sub.assign(cell=[fmt(*x) for x in zip(sub.accuracy, sub.lo, sub.hi)]).pivot(
        index="value", columns="arm", values="cell")
    piv = piv.reindex(list(dict.fromkeys(sub.value)))[[a for a in arm_order if a in piv.columns]]
    inside = set(map(str, train_values))
    return (["| " + knob + " | " + " | ".join(piv.columns) + " |", "|---" * (len(piv.columns) + 1) + "|"]
            + ["| " + str(v) + ("" if str(v) in inside else " (beyond training)") + " | " + " | ".join(r) + " |"
               for v, r in zip(piv.index, piv.values)])


def crossover_verdict(seq: pd.DataFrame, seq_knob: str, flat: pd.DataFrame, flat_knob: str, attn: tuple, hyb: tuple,
                      threshold: float, what: str) -> str:
    """Is the hybrid more robust on the sequential task and the attention model on the flat one (a crossover)?
    ``attn`` / ``hyb``: (arm on ``seq``, arm on ``flat``). Robustness gap on a task = the attention arm's drop from
    the easiest value minus the hybrid's (`degradation`; > 0: the hybrid is more robust). *agrees*: gap > 0 on
    ``seq`` and < 0 on ``flat``; *disagrees*: the gap on ``flat`` is not below the gap on ``seq`` (no shift
    towards attention on flat retrieval); *inconclusive*: any of the four arms below ``threshold`` at its easiest
    value (nothing learned to degrade), all near chance, or a shift without a crossover."""
    spec = {"seq": (seq, seq_knob), "flat": (flat, flat_knob)}
    arm_of = {(t, a): pair[i] for i, t in enumerate(spec) for a, pair in (("attn", attn), ("hyb", hyb))}
    d = {k: degradation(spec[k[0]][0], arm, spec[k[0]][1]) for k, arm in arm_of.items()}
    gap = {t: d[t, "attn"]["drop"] - d[t, "hyb"]["drop"] for t in spec}
    unlearned = [arm_of[k] for k, x in d.items() if x["easy"] < threshold]
    verdict = ("**inconclusive** (all four arms near chance, accuracy < 0.1)"
               if max(max(x["easy"], x["hard"]) for x in d.values()) < 0.1 else
               f"**inconclusive** ({', '.join(unlearned)} below {threshold} at the easiest value: a model that never "
               "learned the task has no degradation to compare)" if unlearned else
               "**agrees**" if gap["seq"] > 0 > gap["flat"] else
               "**disagrees**" if gap["flat"] >= gap["seq"] else
               "**inconclusive** (the gap moves towards attention on flat retrieval, but without a crossover)")

    def part(t):
        return "; ".join(f"{arm_of[t, a]} {x['easy']:.2f} -> {x['hard']:.2f} (drop "
                         f"{x['drop']:+.2f})" for a in ("attn", "hyb") for x in [d[t, a]]) \
            + f" at {spec[t][1]} in {', '.join(map(str, d[t, 'attn']['values']))}"
    return (f"* **{what}**: accuracy from the easiest value to the two hardest, sequential updates: "
            f"{part('seq')}; flat retrieval: {part('flat')}. Robustness gap (attention arm's "
            f"drop minus the hybrid's): sequential {gap['seq']:+.2f}, flat {gap['flat']:+.2f}: {verdict}.")


def plot_knobs(res: pd.DataFrame, path, threshold: float, trs: list, knobs, train_grid: dict, title: str,
               colors: dict) -> None:
    """Accuracy (``res``: seed means with ``arm`` = ``<arch>-<training>``, ``training``, ``knob``, ``value``, ``lo``,
    ``hi``) in one row per training of ``trs`` and one column per knob, one colour per architecture (``colors``),
    the 95% interval over seeds as a band, values beyond ``train_grid`` shaded, ``threshold`` dotted."""
    plt = pyplot()
    fig, axes = plt.subplots(len(trs), len(knobs), figsize=(4.6 * len(knobs), 2.7 * len(trs) + 0.6), squeeze=False)
    for row, tr in zip(axes, trs):
        for ax, knob in zip(row, knobs):
            sub = res[(res.knob == knob) & (res.training == tr)]
            xs = list(dict.fromkeys(res[res.knob == knob]["value"].astype(str)))
            for arm, g in sub.groupby("arm", sort=False):
                arch, x = arm.rsplit("-", 1)[0], [xs.index(str(v)) for v in g["value"]]
                ax.plot(x, g["accuracy"], marker="o", color=colors.get(arch), label=arch)
                if "lo" in g and g["lo"].notna().any():          # 95% interval over training seeds
                    ax.fill_between(x, g["lo"], g["hi"], color=colors.get(arch), alpha=0.15, lw=0)
            inside = [i for i, x in enumerate(xs) if x in map(str, train_grid[knob])]
            if inside and inside[-1] < len(xs) - 1:
                ax.axvspan(inside[-1] + 0.5, len(xs) - 0.5, color="gray", alpha=0.12, lw=0)
                ax.text(inside[-1] + 0.6, 0.97, "beyond\ntraining", fontsize=7, va="top")
            ax.axhline(threshold, color="gray", lw=0.8, ls=":")
            ax.set_xticks(range(len(xs)), xs)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{tr}: accuracy vs {knob}", fontsize=9)
        row[0].set_ylabel("answer accuracy" + (" (closed loop)" if tr.endswith("cot") else ""))
    for ax, knob in zip(axes[-1], knobs):
        ax.set_xlabel(knob)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))      # room for the legend below (save_figure would re-lay it out)
    save_fig(fig, path, dpi=110)
    plt.close(fig)
