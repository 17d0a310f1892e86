"""Files of a subspace: R [rank, width] as safetensors (key ``R``) and its spec (site, rank, width,
seeds, splits, ...) as JSON next to it: ``<stem>.safetensors`` and ``<stem>.spec.json``."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from interp import InterpError


def save_subspace(R: torch.Tensor, spec: dict, stem) -> tuple[Path, Path]:
    """Write R and spec; returns (safetensors path, json path). A non-finite R is refused (nothing written)."""
    from interp.kernels import kernel_spec
    from interp.store import atomic_write_text, save_safetensors
    check_finite(R)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".spec.json")
    save_safetensors(st, {"R": R.detach().float().cpu().contiguous()})   # each file whole or absent
    spec = {**spec, "rank": int(R.shape[0]), "width": int(R.shape[1]), **kernel_spec(training=True)}
    atomic_write_text(js, json.dumps(spec, indent=1, default=str))
    return st, js


def check_finite(R):
    """Refuse an R that is not a finite [rank, width] matrix (e.g. of a diverged DAS run)."""
    if not isinstance(R, torch.Tensor) or R.dim() != 2 or not bool(torch.isfinite(R).all()):
        what = tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__
        raise InterpError(f"subspace R {what} is not a finite [rank, width] matrix (NaN or inf entries?); valid: a "
                          "finite R, e.g. from a DAS run that did not diverge (lower its lr)")


def load_subspace(path) -> tuple[torch.Tensor, dict]:
    """(R, spec) from ``<stem>.safetensors`` (or the stem); spec is {} when no JSON lies beside it."""
    from safetensors.torch import load_file
    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    if not p.is_file():
        raise InterpError(f"subspace file '{p}' not found")
    try:
        d = load_file(str(p))
    except Exception as e:   # safetensors' own errors: a file cut short, or not safetensors at all
        raise InterpError(f"subspace file '{p}' is not a readable safetensors file ({str(e)[:120]})") from None
    if "R" not in d:
        raise InterpError(f"'{p}' holds no tensor 'R' (keys: {', '.join(d) or 'none'})")
    R = d["R"]
    if R.ndim != 2 or not torch.isfinite(R).all():
        raise InterpError(f"'{p}': R must be a finite [rank, width] matrix; it is {tuple(R.shape)}"
                          + ("" if R.ndim != 2 else " with NaN or inf entries"))
    js = p.with_name(p.name[:-len(".safetensors")] + ".spec.json")
    from interp.store import read_json
    return R, (read_json(js) if js.is_file() else {})
