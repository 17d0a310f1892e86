"""Checks of interp.sae's arguments and output folders, made before anything is computed or written: numbers in
range (an InterpError naming the value and the valid ones), a training folder that is an sae run's or new, and a
failed call's leftovers (spec.json, empty units/, a folder it made) removed."""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from pathlib import Path

from interp import InterpError
from interp.checks import MAX_EXAMPLES, MAX_FEATURES

MAX_SEED = 2 ** 53          # as interp.cli.options.INT_MAX
OWNS = ("coder", "metrics.parquet", "eval")   # what a training run writes beside spec.json and units/


def integer(name: str, value, lo: int = 1, hi: int = 2 ** 53) -> int:
    """``value`` as an int in [lo, hi] (bools and non-integers refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        top = "" if hi == 2 ** 53 else f" and <= {hi}"
        raise InterpError(f"{name}={value!r} is not valid; valid: integers >= {lo}{top}")
    return int(value)


def number(name: str, value, lo: float = 0.0, above: bool = False) -> float:
    """``value`` as a finite float >= lo (``above``: > lo)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > lo if above else value >= lo)
    if not ok:
        raise InterpError(f"{name}={value!r} is not valid; valid: finite numbers {'>' if above else '>='} {lo:g}")
    return float(value)


def train_args(k, features, steps, save_every, seed, lr=None, auxk_alpha=0.0, dead_tokens=1, out=None):
    """Refuse training settings out of range (`interp.sae.train.train`, `interp.sae.rank1.train_rank1`)."""
    integer("k", k)
    integer("features", features, hi=MAX_FEATURES)
    if k > features:
        raise InterpError(f"k={k} is more than features={features}; valid: k <= features (k of the features fire "
                          "per row)")
    integer("steps", steps)
    integer("save_every", save_every)
    integer("seed", seed, lo=0, hi=MAX_SEED)
    integer("dead_tokens", dead_tokens)
    number("auxk_alpha", auxk_alpha)
    if lr is not None:
        number("lr", lr, above=True)
    if out is not None:
        from interp.cli.options import check_out
        check_out(out, "out")
        refuse_foreign(Path(out))


def refuse_foreign(out: Path):
    """Refuse a folder that holds files but no spec.json: not an sae run's, so neither a resume nor --overwrite
    may write over (or clear) them."""
    if not out.is_dir() or (out / "spec.json").exists():
        return
    found = sorted(p.name for p in out.iterdir() if not _ours_transient(p.name))
    if found:
        raise InterpError(f"{out} holds {', '.join(found[:3])}{' ...' if len(found) > 3 else ''} but no spec.json "
                          "(the record of an interp sae run), so they are not this trainer's; valid: a new or empty "
                          "folder, an sae run's folder, or another --out")


def _ours_transient(name: str) -> bool:
    """A lock or an atomic write's temporary file (`interp.store`)."""
    from interp.store import is_temp
    return name.startswith(".lock") or is_temp(name)


@contextlib.contextmanager
def tidy_on_failure(out, store: bool = True):
    """Around a call that writes into ``out``: if it fails before its first result (a training run's first
    checkpoint), remove the spec.json and empty units/ it wrote (``store``: a `interp.store.Store` folder) and
    ``out`` itself where the call made it and it is empty, so that a failed call leaves nothing behind."""
    out = Path(out)
    existed, had_spec = out.exists(), (out / "spec.json").exists()
    try:
        yield
    except BaseException:
        units = out / "units"
        if store and not had_spec and not (units.is_dir() and any(units.iterdir())):
            (out / "spec.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                units.rmdir()
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(out)
        raise


def finite_coder(coder, lr):
    """Refuse to save a coder with non-finite weights (training diverged)."""
    import torch
    if not all(bool(torch.isfinite(p).all()) for p in coder.parameters()):
        raise InterpError(f"training diverged (the coder's weights are not finite); nothing was saved; valid: a lower "
                          f"--lr than {lr:g}")
