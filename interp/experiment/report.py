"""An experiment's report and outputs: the markdown header (command, profile, device, date, git
commit), markdown tables, the learning-rate sweep's table and notes, ``report.md`` itself, figures
saved with matplotlib's Agg backend, and tables. Every output file is written with `interp.store`'s
atomic writes (`write_report`, `save_figure`, `save_table`, `save_with`): a call killed while writing
leaves the previous file or the new one, never a part.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from interp.experiment.context import Ctx, device_name, git_commit
from interp.figsave import save_fig
from interp.store import atomic_save, atomic_write_bytes, atomic_write_text

PROFILE_FLAGS = {"quick": "--quick", "test": "--tiny"}


def header(ctx: Ctx, title: str) -> list[str]:
    from interp.experiment import context
    return [f"# {title}", "",
            f"* command: `{ctx.command}`" + (f" (run as `{context.FROM_TOML}`)" if context.FROM_TOML else ""),
            f"* profile: `{ctx.profile}`",
            f"* device: {device_name(ctx.device)}",
            f"* date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; this call took "
            f"{(time.time() - ctx.started) / 60:.1f} min",
            f"* git commit: {git_commit()}", ""] + ctx.notes


def write_report(ctx: Ctx, title: str, body: list[str], verdicts: list[str] | None = None,
                 status=None) -> Path:
    """``<out>/report.md``: the header, the body and the comparison with the published shape, under what its
    verdicts cannot claim (`evidence_notes`; ``status``: the runs' status table)."""
    lines = header(ctx, title) + body
    if verdicts is not None:
        lines += ["", "## Comparison with the published shape", ""] + evidence_notes(ctx, status) + verdicts
    if ctx.profile != "full":
        lines += ["", f"_Profile `{ctx.profile}` uses tiny models trained briefly on CPU: it checks the pipeline end "
                      "to end; its numbers say little about the architectures. The full profile (GPU) is the "
                      "experiment._"]
    return atomic_write_text(ctx.out / "report.md", "\n".join(lines) + "\n")


def evidence_notes(ctx: Ctx, status=None) -> list[str]:
    """The lines above a report's verdicts that say what they cannot claim: fewer than `interp.stats.MIN_SEEDS`
    training seeds in the profile; runs of ``status`` (a status table with ``complete``) not finished yet."""
    from interp.stats import MIN_SEEDS
    k, out = len(ctx.P.get("seeds") or ()), []
    if 0 < k < MIN_SEEDS:
        out.append(f"**{k} training seed{'s' if k > 1 else ''}** (fewer than {MIN_SEEDS}): these verdicts describe "
                   f"this call's runs, not the architectures; a model-level claim needs {MIN_SEEDS} or more seeds.")
    left = 0 if status is None or not len(status) else int((~status.complete.astype(bool)).sum())
    if left:
        out.append(f"**Unfinished**: {left} of {len(status)} runs are not finished, so these verdicts rest on the "
                   "runs finished so far and may change once the same command finishes them.")
    return out + [""] if out else []


def md_table(df: pd.DataFrame, floatfmt: str = "{:.2f}") -> list[str]:
    """``df`` as markdown table lines; floats formatted with ``floatfmt``."""
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():   # NaN (undefined: no interval from one seed, nothing kept) reads "n/a"
        out.append("| " + " | ".join(("n/a" if v != v else floatfmt.format(v)) if isinstance(v, float) else str(v)
                                     for v in row) + " |")
    return out


# --- the learning-rate sweep --------------------------------------------------------------------

def runs_note(status: pd.DataFrame) -> list[str]:
    now = status["trained_now"].astype(bool) if "trained_now" in status else pd.Series(False, index=status.index)
    others = status[~now]
    done = int(others.complete.astype(bool).sum()) if "complete" in status else len(others)
    return [f"Runs trained (or continued) in this call: {int(now.sum())} of {len(status)}; of the others, {done} were "
            "finished by earlier calls of the same command (their checkpoints and cached evaluations are reused)"
            + (f" and {len(others) - done} are not finished yet" if len(others) > done else "") + ".", ""]


def sweep_edge_note(best_lr: dict, lrs) -> list[str]:
    """A warning for every arm whose best learning rate is the smallest or largest one swept (its
    optimum may lie outside the sweep, so the comparison may not use its best setting)."""
    lrs = sorted(float(x) for x in lrs)
    if len(lrs) < 2:
        return [f"_Only one learning rate ({lrs[0]:g}) in this profile: no sweep._", ""] if lrs else []
    edge = {a: float(lr) for a, lr in best_lr.items() if float(lr) in (lrs[0], lrs[-1])}
    if not edge:
        return []
    return ["**Best learning rate at the edge of the sweep** for " + ", ".join(
        f"{a} ({lr:g}, the {'largest' if lr == lrs[-1] else 'smallest'})" for a, lr in edge.items())
        + ": the optimum may lie outside the swept range, so these arms may be under-tuned relative to the others.",
        ""]


# --- figures ------------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi: int = 120) -> Path:
    """tight_layout, save (atomically, in the format of ``path``'s extension, PNG by default), close;
    returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        path = save_fig(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


# --- tables and other outputs -------------------------------------------------------------------

def save_table(df: pd.DataFrame, path) -> Path:
    """``df`` without its index as ``path`` (.csv or .parquet, as pandas writes them), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        return atomic_save(path, lambda tmp: df.to_parquet(tmp, index=False))
    return atomic_save(path, lambda tmp: df.to_csv(tmp, index=False))


def save_with(path, write) -> Path:
    """An output that a library writes itself (e.g. ``ProbeResult.plot(path)``) written atomically:
    ``write(p)`` writes a file of ``path``'s name in a private temporary folder, which then replaces
    ``path`` with `interp.store`'s atomic write."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="interp-out-") as d:
        tmp = Path(d) / path.name
        write(tmp)
        return atomic_write_bytes(path, tmp.read_bytes())
