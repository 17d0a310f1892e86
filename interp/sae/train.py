"""Training a TopK sparse coder on one site: seeded, resumable (interp.store units), with a progress bar.

Per step: one batch of rows from the source (`interp.sae.data`), divided by the run's scale; loss
FVU + ``auxk_alpha`` * sparsify's AuxK loss over the latents that have not fired for ``dead_tokens``
rows; Adam (sparsify's default learning rate 2e-4 / sqrt(features / 2^14) unless ``lr``); the
decoder's gradient parallel to its rows removed and its rows renormalised after each step, as
sparsify's trainer does. Every ``save_every`` steps the store gets the step's metrics and one
``checkpoint`` unit (coder, Adam state, dead-feature counters, scale), replaced atomically; a run
started again with the same settings continues from it and gives the same coder bit for bit. The
finished coder is saved folded to raw activations in ``<out>/coder`` (sparsify's format)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from interp.sae import coder as C
from interp.store import Store, model_digest, save_parquet

KIND = "sae"


@dataclass
class TrainResult:
    coder: object            # the trained sparsify SparseCoder, folded to raw activations
    metrics: pd.DataFrame    # step, fvu, auxk, dead_frac (fraction of latents dead at that step)
    scale: float             # the training scale (RMS of the first batch)
    path: Path | None        # <out>/coder, or None without out


def _state(coder, opt, fired, step, scale) -> dict:
    out = {f"coder.{k}": v.detach().clone() for k, v in coder.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        out.update({f"adam.{i}.{n}": torch.as_tensor(v).clone() for n, v in st.items()})
    out.update(fired=fired.clone(), step=torch.tensor(step), scale=torch.tensor(scale, dtype=torch.float64))
    return out


def _restore(ck, coder, opt, fired):
    coder.load_state_dict({k[6:]: v for k, v in ck.items() if k.startswith("coder.")})
    state = {}
    for k, v in ck.items():
        if k.startswith("adam."):
            _, i, n = k.split(".", 2)
            state.setdefault(int(i), {})[n] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    fired.copy_(ck["fired"])
    return int(ck["step"]), float(ck["scale"])


def _one_step(coder, opt, x, dead, auxk_alpha):
    out = coder(x, dead_mask=dead if auxk_alpha > 0 else None)
    loss = out.fvu + auxk_alpha * out.auxk_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    coder.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    coder.set_decoder_norm_to_unit_norm()
    return out


def spec_of(model, site, source, k, features, lr, auxk_alpha, dead_tokens, seed, model_name=None) -> dict:
    """What determines a training run's coder (the number of steps does not: a longer run continues a shorter)."""
    return {"model": {"name": model_name, "digest": model_digest(model)}, "site": site.label(),
            "source": source.spec(), "coder": {"k": k, "features": features, "lr": lr, "auxk_alpha": auxk_alpha,
                                                "dead_tokens": dead_tokens, "seed": seed, "lib": "eai-sparsify"}}


def train(model, site, source, k: int = 32, features: int = 4096, steps: int = 1000, lr: float | None = None,
          seed: int = 0, out=None, save_every: int = 100, auxk_alpha: float = 1 / 32, dead_tokens: int = 50_000,
          model_name: str | None = None, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train a TopK coder (``k`` of ``features`` latents) on ``source``'s rows of ``site`` for ``steps``
    steps; with ``out`` resumable there (see the module docstring). Returns a `TrainResult`."""
    x0 = source.rows(0)
    lr = lr if lr is not None else 2e-4 / (features / 2 ** 14) ** 0.5
    coder = C.new(x0.shape[1], k, features, seed)
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    fired = torch.zeros(features, dtype=torch.long)  # rows since each latent last fired
    scale = float(x0.pow(2).mean().sqrt().clamp_min(1e-12))
    with torch.no_grad():
        coder.b_dec.copy_(x0.mean(0) / scale)
    spec = spec_of(model, site, source, k, features, lr, auxk_alpha, dead_tokens, seed, model_name)
    store = Store(out, KIND, spec, overwrite=overwrite, owns=("coder", "metrics.parquet")) if out else None
    with store if store else contextlib.nullcontext():
        start = 0
        if store and store.has("checkpoint"):
            start, scale = _restore(store.get("checkpoint"), coder, opt, fired)
        rows = []
        bar = tqdm(total=steps, initial=start, disable=not progress, desc=f"sae {site.label()}")
        for step in range(start, steps):
            x = (x0 if step == 0 else source.rows(step)) / scale
            res = _one_step(coder, opt, x, fired > dead_tokens, auxk_alpha)
            fired += x.shape[0]
            fired[res.latent_indices.flatten().unique()] = 0
            rows.append({"step": step + 1, "fvu": float(res.fvu.detach()), "auxk": float(res.auxk_loss.detach()),
                         "dead_frac": float((fired > dead_tokens).float().mean()), "rows": int(x.shape[0])})
            bar.update(1)
            bar.set_postfix(fvu=f"{rows[-1]['fvu']:.3f}")
            if store and ((step + 1) % save_every == 0 or step + 1 == steps):
                store.put(f"metrics/step={step + 1:08d}", pd.DataFrame(rows))
                store.put("checkpoint", _state(coder, opt, fired, step + 1, scale))
                rows = []
        bar.close()
        metrics = _metrics(store, rows)
        folded = C.fold(coder, scale)
        path = None
        if store:
            meta = {"site": site.name, "head": site.head, "model": model_name, "scale": scale, "spec": spec}
            path = C.save(folded, Path(out) / "coder", meta)
            save_parquet(Path(out) / "metrics.parquet", metrics)
    return TrainResult(folded, metrics, scale, path)


def _metrics(store, rows) -> pd.DataFrame:
    frames = [store.get(k) for k in store.keys() if k.startswith("metrics/")] if store else []
    frames.append(pd.DataFrame(rows))
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    return df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True) if len(df) else df
