"""Files of a subspace: R [rank, width] as safetensors (key ``R``) and its spec (site, rank, width,
seeds, splits, ...) as JSON next to it: ``<stem>.safetensors`` and ``<stem>.spec.json``. Where R acts (site,
head, side), its width and rank and the model's weights digest are also written into the safetensors file's own
metadata (one key ``interp``: those fields as JSON with sorted keys, so two equal runs write equal bytes; files of
earlier versions hold them as keys ``interp.<field>``, still read), so a basis copied without its JSON can still be
checked (`load_subspace`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from interp import InterpError

META = ("site", "head", "side", "width", "rank", "model_digest")   # fields kept in the file's metadata
KEY = "interp"      # the one metadata key (safetensors writes several keys in a random order)
PREFIX = "interp."  # earlier files: one key per field


def save_subspace(R: torch.Tensor, spec: dict, stem) -> tuple[Path, Path]:
    """Write R and spec; returns (safetensors path, json path). A non-finite R is refused (nothing written).
    The file's metadata records ``spec``'s site, head, side and model_digest (where given), width and rank."""
    from interp.kernels import kernel_spec
    from interp.store import atomic_write_text, save_safetensors
    check_finite(R)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".spec.json")
    spec = {**spec, "rank": int(R.shape[0]), "width": int(R.shape[1])}
    save_safetensors(st, {"R": R.detach().float().cpu().contiguous()},   # each file whole or absent
                     metadata=_to_meta(spec))
    spec = {**spec, **kernel_spec(training=True)}
    atomic_write_text(js, json.dumps(spec, indent=1, default=str))
    return st, js


def _to_meta(spec: dict) -> dict:
    """{'interp': JSON of {field: str}} of `META`'s fields in ``spec``, keys sorted; a head or side of None (all
    heads; not rec.state) is written as ''."""
    fields = {k: "" if spec[k] is None else str(spec[k]) for k in META if k in spec}
    return {KEY: json.dumps(fields, sort_keys=True)}


def _from_meta(meta: dict, p: Path) -> dict:
    """The fields `_to_meta` wrote (or an earlier version's ``interp.<field>`` keys), decoded ({} for a file
    without them); a malformed one is refused."""
    if KEY in meta:
        try:
            fields = json.loads(meta[KEY])
        except json.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):
            raise InterpError(f"'{p}': metadata '{KEY}' is not a JSON object; valid: a file as `interp das` / "
                              "save_subspace wrote it")
    else:
        fields = {k[len(PREFIX):]: v for k, v in meta.items() if k.startswith(PREFIX)}
    out = {}
    for k in META:
        v = fields.get(k)
        if v is None:
            continue
        if k in ("head", "width", "rank"):
            try:
                v = None if v == "" and k == "head" else int(v)
            except ValueError:
                raise InterpError(f"'{p}': metadata {PREFIX}{k} '{v}' is not valid; valid: an integer"
                                  + (" or '' (all heads)" if k == "head" else "")) from None
        elif k == "side":
            v = v or None
        out[k] = v
    return out


def check_finite(R):
    """Refuse an R that is not a finite [rank, width] matrix (e.g. of a diverged DAS run)."""
    if not isinstance(R, torch.Tensor) or R.dim() != 2 or not bool(torch.isfinite(R).all()):
        what = tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__
        raise InterpError(f"subspace R {what} is not a finite [rank, width] matrix (NaN or inf entries?); valid: a "
                          "finite R, e.g. from a DAS run that did not diverge (lower its lr)")


def _read(p: Path) -> tuple[torch.Tensor, dict]:
    """(R, the file's metadata) of a safetensors file (never unpickled)."""
    from safetensors import safe_open
    try:
        with safe_open(str(p), framework="pt") as f:
            meta, keys = f.metadata() or {}, list(f.keys())
            R = f.get_tensor("R") if "R" in keys else None
    except Exception as e:   # safetensors' own errors: a file cut short, or not safetensors at all
        raise InterpError(f"subspace file '{p}' is not a readable safetensors file ({str(e)[:120]})") from None
    if R is None:
        raise InterpError(f"'{p}' holds no tensor 'R' (keys: {', '.join(keys) or 'none'})")
    return R, meta


def load_subspace(path) -> tuple[torch.Tensor, dict]:
    """(R, spec) from ``<stem>.safetensors`` (or the stem): spec is the JSON beside it ({} if none) with the
    fields the file's own metadata records (site, head, side, width, rank, model_digest) laid over it. Where
    both record a field and they disagree, the pair is refused naming the fields; so is metadata whose width
    or rank is not R's."""
    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    if not p.is_file():
        raise InterpError(f"subspace file '{p}' not found")
    R, meta = _read(p)
    if R.ndim != 2 or not torch.isfinite(R).all():
        raise InterpError(f"'{p}': R must be a finite [rank, width] matrix; it is {tuple(R.shape)}"
                          + ("" if R.ndim != 2 else " with NaN or inf entries"))
    made = _from_meta(meta, p)
    shape = {"rank": int(R.shape[0]), "width": int(R.shape[1])}
    bad = [f"{k} {made[k]} (R has {v})" for k, v in shape.items() if k in made and made[k] != v]
    if bad:
        raise InterpError(f"'{p}': its metadata does not fit its R: {', '.join(bad)}; valid: a file as "
                          "`interp das` / save_subspace wrote it")
    js = p.with_name(p.name[:-len(".safetensors")] + ".spec.json")
    from interp.store import read_json
    side = read_json(js) if js.is_file() else {}
    side = side if isinstance(side, dict) else {}
    other = [f"{k} {made[k]!r} (file) vs {side[k]!r} ({js.name})" for k in made if k in side and side[k] != made[k]]
    if other:
        raise InterpError(f"'{p}' and the {js.name} beside it disagree: {', '.join(other)}; valid: the "
                          f"{js.name} written with this file (restore or remove it)")
    return R, {**side, **made}
