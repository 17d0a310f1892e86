"""Training rows for a dictionary: site vectors streamed straight from the model's forward on fresh
task batches (no disk round trip), or read from `interp capture` shards.

A source gives ``rows(step)`` -> ``[N, d]`` float32, a pure function of (source, step): the model
source runs `hooks.HookedModel.run_with_cache` on ``tasks.generate(task, batch_size,
seed=seed * STRIDE + step)`` and keeps every non-pad token, shuffled by a generator seeded with
(seed, step); the capture source shuffles the captured rows once per epoch. So a resumed training
run sees exactly the rows the uninterrupted one saw."""
from __future__ import annotations

import torch

import hooks
from interp import InterpError
from interp import tasks as T
from interp.tasks.vocab import PAD
from interp.sae.sites import SaeSite, vectors

STRIDE = 1_000_003  # task seed of training step s: seed * STRIDE + s (evaluation uses its own seeds)


def wrap(model):
    """A `hooks.HookedModel` (``model`` may already be one)."""
    return model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)


def family_of(hm, layer: int) -> str | None:
    """The recurrent family of block ``layer`` ('gdn', 'gla', 'mamba2', 'mamba1') or None (attention)."""
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
    g = torch.Generator().manual_seed(int(seed) * STRIDE + int(step))
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
        b = T.generate(self.task, self.batch_size, seed=self.seed * STRIDE + step, **self.knobs).to(self.device)
        x, _ = site_vectors(self.hm, self.site, b.tokens)
        return _shuffle(x[b.tokens != PAD], self.seed, step)


class CaptureSource:
    """Rows of an `interp capture` folder (its names must include `SaeSite.cache_names`; write sites
    need every position captured). ``family``: the layer's recurrent family (write sites only)."""

    def __init__(self, path, site: SaeSite, batch_rows: int = 1024, seed: int = 0, family: str | None = None):
        from interp.capture import load_capture
        names = site.cache_names(family)
        cap = load_capture(path, names)
        missing = [n for n in names if n not in cap]
        if missing:
            raise InterpError(f"capture {path} lacks {', '.join(missing)}; capture them with --names")
        self.x = vectors(site, cap, family).flatten(0, 1)
        self.path, self.batch_rows, self.seed = str(path), int(batch_rows), seed

    def spec(self) -> dict:
        return {"kind": "capture", "path": self.path, "batch_rows": self.batch_rows, "seed": self.seed,
                "rows": int(self.x.shape[0])}

    def rows(self, step: int):
        per_epoch = max(1, self.x.shape[0] // self.batch_rows)
        epoch, i = divmod(int(step), per_epoch)
        order = torch.randperm(self.x.shape[0], generator=torch.Generator().manual_seed(self.seed * STRIDE + epoch))
        return self.x[order[i * self.batch_rows:(i + 1) * self.batch_rows]]
