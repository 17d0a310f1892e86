"""Training rows for a dictionary: site vectors streamed straight from the model's forward on fresh
task batches (no disk round trip), or read from `interp capture` shards.

A source gives ``rows(step)`` -> ``[N, d]`` float32, a pure function of (source, step): the model
source runs `hooks.HookedModel.run_with_cache` on ``tasks.generate(task, batch_size,
seed=step_seed(seed, step))`` and keeps every non-pad token, shuffled by a generator seeded with
(seed, step); the capture source keeps the captured rows of real tokens (its ``attention_mask``, or the
non-pad tokens of a task capture) and shuffles them once per epoch. So a resumed training run sees
exactly the rows the uninterrupted one saw. A capture is checked against the model (its weights digest)
and is known by its own spec (`capture_digest`), not by its path."""
from __future__ import annotations

from pathlib import Path

import torch

import hooks
from interp import InterpError
from interp import tasks as T
from interp.tasks.vocab import PAD
from interp.sae import writes as W
from interp.sae.sites import SaeSite, vectors

STRIDE = 1_000_003  # task seed of training step s: seed * STRIDE + s (evaluation uses its own seeds)


def step_seed(seed: int, step: int) -> int:
    """The seed of training step ``step``: seed * STRIDE + step, modulo 2^63 (torch and numpy take it for any
    --seed; below 2^63 it is the plain sum, so runs of ordinary seeds keep their data)."""
    return (int(seed) * STRIDE + int(step)) % 2 ** 63


def wrap(model):
    """A `hooks.HookedModel` (``model`` may already be one)."""
    return model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)


def family_of(hm, layer: int) -> str | None:
    """The recurrent family of block ``layer`` ('gdn', 'gla', 'mamba2', 'mamba1') or None (attention)."""
    if not 0 <= layer < len(hm.layers):
        raise InterpError(f"block {layer} does not exist; valid: blocks 0..{len(hm.layers) - 1} of this model")
    return hm.layers[layer].rec_family


def site_vectors(hm, site: SaeSite, tokens):
    """(vectors [B, T, d] float32, logits) of one forward of ``tokens``."""
    fam = family_of(hm, site.layer)
    if site.kind != "resid" and fam is None:
        raise InterpError(f"block {site.layer} has no recurrent mixer: {site.name} does not exist there")
    with torch.no_grad():
        logits, cache = hm.run_with_cache(tokens, names=site.cache_names(fam))
    return vectors(site, cache, fam), logits


def _shuffle(x, seed: int, step: int):
    g = torch.Generator().manual_seed(step_seed(seed, step))
    return x[torch.randperm(x.shape[0], generator=g).to(x.device)]


class ModelSource:
    """Rows streamed from the model: ``batch_size`` fresh task examples per step."""

    def __init__(self, model, site: SaeSite, task: str = "mqar", knobs: dict | None = None,
                 batch_size: int = 32, seed: int = 0, device: str = "cpu"):
        self.hm, self.site, self.task = wrap(model), site, task
        self.knobs, self.batch_size, self.seed, self.device = dict(knobs or {}), batch_size, seed, device

    def spec(self) -> dict:
        return {"kind": "model", "task": self.task, "knobs": T.spec_knobs(self.task, self.knobs),
                "batch_size": self.batch_size,
                "seed": self.seed}

    def rows(self, step: int):
        b = T.generate(self.task, self.batch_size, seed=step_seed(self.seed, step), **self.knobs).to(self.device)
        x, _ = site_vectors(self.hm, self.site, b.tokens)
        return _shuffle(x[b.tokens != PAD], self.seed, step)


class CaptureSource:
    """Rows of an `interp capture` folder at the real tokens (its names must include `SaeSite.cache_names`;
    GDN's write sites need the positions from 0 on, whose previous states they read). ``family``: the layer's
    recurrent family (write sites only); ``model``: refuse a capture of other weights; ``device``: where the rows
    go."""

    def __init__(self, path, site: SaeSite, batch_rows: int = 1024, seed: int = 0, family: str | None = None,
                 model=None, device: str = "cpu"):
        from interp.capture import load_capture
        from interp.store import spec_digest
        names = site.cache_names(family)
        made = capture_spec(path)
        self.digest, self.model_digest = spec_digest(made), (made.get("model") or {}).get("digest")
        task = "task" in (made.get("source") or made.get("meta") or {})
        if model is not None:
            check_capture_model(self, model, path)
        cap = load_capture(path, names)
        missing = [n for n in names if n not in cap]
        if missing:
            raise InterpError(f"capture {path} lacks {', '.join(missing)}; capture them with --names")
        _check_positions(site, family, cap.positions, path)
        x = vectors(site, cap, family)
        keep = _real_tokens(cap, x.shape[:2], task, path)
        self.x = (x[keep] if keep is not None else x.flatten(0, 1)).to(device)
        if self.x.shape[0] == 0:
            raise InterpError(f"capture {path} holds no real token at {site.label()}; valid: a capture with tokens")
        self.path, self.batch_rows, self.seed = str(path), int(batch_rows), seed

    def spec(self) -> dict:
        return {"kind": "capture", "capture": self.digest, "batch_rows": self.batch_rows, "seed": self.seed,
                "rows": int(self.x.shape[0])}

    def rows(self, step: int):
        per_epoch = max(1, self.x.shape[0] // self.batch_rows)
        epoch, i = divmod(int(step), per_epoch)
        order = torch.randperm(self.x.shape[0], generator=torch.Generator().manual_seed(step_seed(self.seed, epoch)))
        return self.x[order[i * self.batch_rows:(i + 1) * self.batch_rows].to(self.x.device)]


def capture_spec(path) -> dict:
    """The capture's own spec (spec.json's; a folder written before spec.json existed: its manifest), which a
    training run records by digest, so that the same capture by another path resumes and a capture made again
    otherwise does not."""
    from interp.store import read_json, read_spec
    head = read_spec(path)
    if isinstance(head, dict) and isinstance(head.get("spec"), dict):
        return head["spec"]
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        raise InterpError(f"{path} holds no capture: no spec.json or manifest.json; valid: an `interp capture` folder")
    return read_json(mf)


def check_capture_model(source, model, path=None):
    """Refuse a capture made with other weights than ``model``'s (a coder would be recorded as this model's)."""
    from interp.store import model_digest
    have = getattr(source, "model_digest", None)
    if have is not None and have != model_digest(model):
        raise InterpError(f"capture {path or getattr(source, 'path', '')} was made with other model weights ({have}) "
                          f"than this model's ({model_digest(model)}); valid: a capture of the same --model")


def _check_positions(site, family, positions, path):
    """GDN's write at t reads S_{t-1}: a capture of scattered positions would give it the previous *captured* state."""
    if site.kind not in ("write", "write_kd") or positions is None or "state" not in W.needs(family):
        return
    if [int(p) for p in positions] != list(range(len(positions))):
        raise InterpError(f"{site.name} from capture {path}: its positions {_short(positions)} are not 0..n-1, and "
                          "GDN's write at each token reads the state before it; valid: a capture of every position "
                          "(or of 0:n)")


def _short(positions) -> str:
    p = [int(x) for x in positions]
    return ",".join(map(str, p[:6])) + (",..." if len(p) > 6 else "")


def _real_tokens(cap, shape, task: bool, path=None):
    """[N, P] bool of the captured rows at real tokens (padded captures: their attention_mask; task captures: the
    non-pad tokens), or None where every row is one. ``shape``: (N, P) of the rows; tokens for other than N
    examples (a capture cut short) are refused."""
    labels, tokens = cap.labels or {}, cap.tokens
    n_pos = shape[1]
    if tokens is not None and tokens.shape[0] != shape[0]:
        raise InterpError(f"capture {path} holds activations of {shape[0]} examples but tokens of {tokens.shape[0]}; "
                          "valid: a finished capture (run the same interp capture command again to finish it)")
    if labels.get("attention_mask") is not None:
        real = torch.as_tensor(labels["attention_mask"]).bool()
    elif tokens is not None and task:      # a task's batch: pads are PAD tokens
        real = tokens != PAD
    else:
        return None
    if cap.positions is not None:
        real = real[:, [int(p) % real.shape[1] for p in cap.positions]]
    return real if real.shape[1] == n_pos else None
