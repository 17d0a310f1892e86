"""`SaeEval`: one dictionary's evaluation as a tidy DataFrame, with ``.plot()`` and ``.save()``.

Columns: ``section`` (quality | splice | groundtruth | needed | interchange | substitution), ``metric``, ``condition``,
``variable`` (e.g. ``bound_value=17``), ``feature`` (latent index, -1 if none), ``value``, ``lo`` / ``hi`` (95%
bootstrap interval where one is computed: substitution), ``n``; the
site, model and task are in ``attrs['spec']``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from interp.store import atomic_write_text, save_csv, save_parquet
from interp.figsave import save_fig

COLUMNS = ["section", "metric", "condition", "variable", "feature", "value", "lo", "hi", "n"]


class SaeEval(pd.DataFrame):
    """Tidy evaluation rows (module docstring). ``.plot(path)`` draws splicing, best-latent AUROC per
    value, the latents-needed curve and interchange accuracy; ``.summary()`` one line per headline number."""

    @property
    def _constructor(self):
        return SaeEval

    @classmethod
    def from_rows(cls, rows, spec: dict) -> "SaeEval":
        df = cls(pd.DataFrame(rows).reindex(columns=COLUMNS))
        df["feature"] = df["feature"].fillna(-1).astype(int)
        df[["condition", "variable"]] = df[["condition", "variable"]].astype(object).fillna("")
        df.attrs["spec"] = spec
        return df

    def get(self, section, metric=None, condition=None):
        m = self.section == section
        if metric is not None:
            m &= self.metric == metric
        if condition is not None:
            m &= self.condition == condition
        return self[m]

    def summary(self) -> pd.DataFrame:
        """Headline numbers: quality metrics, splice accuracy / KL per condition, mean and median best-latent
        AUROC, latents needed, IIA per condition (random: mean over seeds)."""
        out = [self.get("quality")[["metric", "value"]]]
        sp = self.get("splice")
        out.append(sp.assign(metric=sp.metric + "[" + sp.condition + "]")[["metric", "value"]])
        au = self.get("groundtruth", "auroc").value
        if len(au):
            nu = self.get("groundtruth", "auroc_null").value
            out.append(pd.DataFrame({"metric": ["auroc_mean", "auroc_median", "values_auroc>0.9", "auroc_null_mean"],
                                     "value": [au.mean(), au.median(), float((au > 0.9).mean()), nu.mean()]}))
        ic = self.get("interchange", "iia")
        if len(ic):
            g = ic.groupby("condition", sort=False).value.mean()
            out.append(pd.DataFrame({"metric": [f"iia[{c}]" for c in g.index], "value": g.values}))
        su = self.get("substitution")
        if len(su):
            out.append(su.assign(metric=su.metric + "[" + su.condition + "]")[["metric", "value"]])
        return pd.concat(out, ignore_index=True)

    def plot(self, path=None, title=None):  # noqa: D102 - documented on the class
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        panels = [(sec, fn) for sec, fn in (("splice", self._plot_splice), ("groundtruth", self._plot_auroc),
                                            ("needed", self._plot_needed), ("interchange", self._plot_interchange),
                                            ("substitution", self._plot_substitution))
                  if (self.section == sec).any() or (sec == "splice" and not (self.section == "substitution").any())]
        fig, ax = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 0.5, 3.8), squeeze=False)
        for a, (_, fn) in zip(ax[0], panels):
            fn(a)
        sp = self.attrs.get("spec", {})
        q = {r.metric: r.value for r in self.get("quality").itertuples()}
        site = sp.get("site", "") + (f" -> {sp['target_site']}" if sp.get("target_site") else "")
        kind = {"transcoder": "transcoder, ", "rank1": "rank-1 atoms, "}.get(sp.get("coder"), "")
        qual = (f", FVU {q['fvu']:.3f}, dead {q.get('dead_frac', np.nan):.2f}, dense {q.get('dense_frac', np.nan):.2f}"
                if "fvu" in q else "")      # (a substitution table has no quality rows)
        fig.suptitle(title or f"{sp.get('model', '')} {site} on {sp.get('task', '')}: {kind}"
                     + ("\n" if len(panels) < 3 else "")
                     + f"k={sp.get('k', '?')} of {sp.get('features', '?')} latents{qual}", fontsize=10)
        fig.tight_layout()
        if path is not None:
            save_fig(fig, path, dpi=110)
            plt.close(fig)
        return fig

    def _plot_splice(self, ax):
        sp = self.get("splice", "accuracy")
        ax.bar(sp.condition, sp.value, color=["0.5", "C0", "C3"][:len(sp)])
        for i, r in enumerate(sp.itertuples()):
            kl = self.get("splice", "kl", r.condition).value
            ax.text(i, r.value + 0.02, f"{r.value:.2f}\nKL {float(kl.iloc[0]) if len(kl) else 0:.2g}",
                    ha="center", fontsize=8)
        ax.set_ylim(0, 1.25)
        ax.set_ylabel("answer accuracy")
        ax.set_title("spliced in (site -> reconstruction)", fontsize=9)

    def _plot_substitution(self, ax):
        su = self.get("substitution", "kl")
        err = np.array([su.value - su.lo, su.hi - su.value]).clip(min=0)
        ax.bar(su.condition, su.value, yerr=np.nan_to_num(err), color="C0", capsize=3)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.set_ylabel("KL(clean || edited) at answers (95% CI)")
        ax.set_title(f"write substituted ({self.attrs.get('spec', {}).get('where', '')})", fontsize=9)

    def _plot_auroc(self, ax):
        g = self.get("groundtruth", "auroc")
        f1 = self.get("groundtruth", "f1")
        if not len(g):
            ax.axis("off")
            return
        vals = [v.split("=")[-1] for v in g.variable]
        ax.bar(range(len(g)), g.value, color="C0", label="AUROC")
        ax.plot(range(len(f1)), f1.value, "o", ms=3, color="C1", label="F1 (active)")
        null = self.get("groundtruth", "auroc_null")
        if len(null):
            ax.plot(range(len(null)), null.value, "_", ms=6, color="k", label="best AUROC, labels permuted")
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        step = max(1, len(vals) // 16)
        ax.set_xticks(range(0, len(vals), step), vals[::step], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(g.variable.iloc[0].split("=")[0] + " value")
        ax.set_title("best single latent per value", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")

    def _plot_needed(self, ax):
        nd = self.get("needed", "accuracy")
        if not len(nd):
            ax.axis("off")
            return
        raw, rest = nd[nd.condition == "raw"], nd[nd.condition != "raw"]
        ax.plot(rest.n, rest.value, marker="o", label="probe on top latents")
        ax.axhline(float(raw.value.iloc[0]), color="C3", ls="--", label=f"probe on raw site (d={int(raw.n.iloc[0])})")
        ax.set_xscale("log")
        ax.set_xlabel("latents used (union of top m per value)")
        ax.set_ylabel("held-out probe accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title("latents needed to decode", fontsize=9)
        ax.legend(fontsize=7)

    def _plot_interchange(self, ax):
        ic = self.get("interchange", "iia")
        if not len(ic):
            ax.axis("off")
            return
        conds = list(dict.fromkeys(ic.condition))
        means = [ic[ic.condition == c].value.mean() for c in conds]
        ax.bar(conds, means, color=["C0", "0.6", "C2"][:len(conds)])
        rnd = ic[ic.condition == "random"].value
        if len(rnd):
            ax.plot([conds.index("random")] * len(rnd), rnd, "k.", ms=4)
        for i, m in enumerate(means):
            ax.text(i, m + 0.02, f"{m:.2f}", ha="center", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("interchange accuracy")
        ax.set_title(f"swap latents clean -> corrupted (n={int(ic.n.iloc[0])})", fontsize=9)

    def save(self, out, stem: str = "sae_eval") -> list[Path]:
        """<out>/<stem>.csv, .parquet, .png and <stem>_summary.md (an empty table is refused: nothing to save)."""
        if not len(self) or not self.section.notna().any():
            from interp import InterpError
            raise InterpError("this SaeEval holds no rows, so there is nothing to save; valid: the table of an "
                              "evaluation (interp.sae.run_eval, run_eval_rank1, run_eval_transcoder, substitution)")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self)
        paths = [save_csv(out / f"{stem}.csv", df, index=False), save_parquet(out / f"{stem}.parquet", df)]
        self.plot(out / f"{stem}.png")
        paths.append(out / f"{stem}.png")
        paths.append(atomic_write_text(out / f"{stem}_summary.md", markdown(self.summary())))
        return paths


def markdown(df: pd.DataFrame, fmt: str = "{:.3f}") -> str:
    """A DataFrame as a markdown table (floats with ``fmt``)."""
    cells = [[fmt.format(v) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"
