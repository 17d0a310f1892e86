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
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from interp import InterpError
from interp.kernels import kernel_spec
from interp.sae import checks
from interp.sae import coder as C
from interp.sae.data import check_capture_model
from interp.store import Store, model_digest, save_parquet

KIND = "sae"


@dataclass
class TrainResult:
    coder: object            # the trained sparsify SparseCoder, folded to raw activations
    metrics: pd.DataFrame    # step, fvu, auxk, dead_frac (fraction of latents dead at that step)
    scale: object            # the training scale (RMS of the first batch); (input, target) for transcoders
    path: Path | None        # <out>/coder, or None without out


def _state(coder, opt, fired, step, scale) -> dict:
    out = {f"coder.{k}": v.detach().cpu().clone() for k, v in coder.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        out.update({f"adam.{i}.{n}": torch.as_tensor(v).cpu().clone() for n, v in st.items()})
    out.update(fired=fired.cpu().clone(), step=torch.tensor(step), scale=torch.tensor(scale, dtype=torch.float64))
    return out


def _restore(ck, coder, opt, fired):
    """Load a checkpoint into coder / Adam / counters; returns (step, scale) (scale: a float, or a tuple of
    floats for coders with several input scales)."""
    coder.load_state_dict({k[6:]: v for k, v in ck.items() if k.startswith("coder.")})
    state = {}
    for k, v in ck.items():
        if k.startswith("adam."):
            _, i, n = k.split(".", 2)
            state.setdefault(int(i), {})[n] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    fired.copy_(ck["fired"])
    s = ck["scale"].tolist()
    return int(ck["step"]), (tuple(s) if isinstance(s, list) else float(s))


def _one_step(coder, opt, x, y, dead, auxk_alpha):
    out = coder(x, y=y, dead_mask=dead if auxk_alpha > 0 else None)
    loss = out.fvu + auxk_alpha * out.auxk_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if y is None:  # sparsify's trainer keeps unit decoder rows for autoencoders only (transcoders start at 0)
        coder.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    if y is None:
        coder.set_decoder_norm_to_unit_norm()
    return {"fvu": float(out.fvu.detach()), "auxk": float(out.auxk_loss.detach())}, out.latent_indices


def spec_of(model, site, source, k, features, lr, auxk_alpha, dead_tokens, seed, model_name=None,
            target=None) -> dict:
    """What determines a training run's coder (the number of steps does not: a longer run continues a shorter)."""
    spec = {"model": {"name": model_name, "digest": model_digest(model)}, "site": site.label(),
            "source": source.spec(), "coder": {"k": k, "features": features, "lr": lr, "auxk_alpha": auxk_alpha,
                                                "dead_tokens": dead_tokens, "seed": seed, "lib": "eai-sparsify"}}
    if target is not None:
        spec["target"] = target.label()
    return {**spec, **kernel_spec()}   # the model's kernels, where not the defaults (interp.kernels)


def rms(x) -> float:
    """The training scale of a batch: its root mean square (floored)."""
    return float(x.pow(2).mean().sqrt().clamp_min(1e-12))


def split(batch):
    """(inputs, targets or None) of a source's rows (a tensor, or an (inputs, targets) pair)."""
    return batch if isinstance(batch, tuple) else (batch, None)


def fit(coder, opt, source, steps, step_fn, scale, store=None, save_every=100, progress=True, desc="sae",
        dead_tokens=50_000, x0=None):
    """The resumable loop every coder shares: per step one batch ``source.rows(step)`` (``x0`` for step 0),
    ``step_fn(batch, scale, dead_mask) -> (metrics dict, latent indices fired)``; with an open `Store`,
    metrics and a checkpoint every ``save_every`` steps, and a run that finds a checkpoint continues from
    it. ``coder.num_latents`` latents. Returns (metrics DataFrame, scale)."""
    dev = next(coder.parameters()).device  # the coder trains where its rows are (`train` moves it there)
    fired = torch.zeros(coder.num_latents, dtype=torch.long, device=dev)  # rows since each latent last fired
    start = 0
    if store and store.has("checkpoint"):
        start, scale = _restore(store.get("checkpoint"), coder, opt, fired)
        if start > steps:
            raise InterpError(f"{store.path} holds a coder trained for {start} steps, more than the {steps} asked "
                              f"for; valid: --steps {start} or more (to continue it), --overwrite (to train it again "
                              "for fewer), or another --out")
    rows = []
    with tqdm(total=steps, initial=start, disable=not progress, desc=desc) as bar:   # (closed before an error)
        for step in range(start, steps):
            batch = x0 if step == 0 and x0 is not None else source.rows(step)
            m, idx = step_fn(batch, scale, fired > dead_tokens)
            if not all(math.isfinite(v) for v in m.values()):
                got = ", ".join(f"{k} {v:g}" for k, v in m.items())
                raise InterpError(f"training diverged at step {step + 1} ({got}); no coder was saved; valid: a lower "
                                  f"--lr than {opt.param_groups[0]['lr']:g}")
            n = int(split(batch)[0].shape[0])
            fired += n
            fired[idx.flatten().unique()] = 0
            rows.append({"step": step + 1, **m, "dead_frac": float((fired > dead_tokens).float().mean()), "rows": n})
            bar.update(1)
            bar.set_postfix(fvu=f"{rows[-1]['fvu']:.3f}")
            if store and ((step + 1) % save_every == 0 or step + 1 == steps):
                store.put(f"metrics/step={step + 1:08d}", pd.DataFrame(rows))
                store.put("checkpoint", _state(coder, opt, fired, step + 1, scale))
                rows = []
    return _metrics(store, rows), scale


def train(model, site, source, k: int = 32, features: int = 4096, steps: int = 1000, lr: float | None = None,
          seed: int = 0, out=None, save_every: int = 100, auxk_alpha: float = 1 / 32, dead_tokens: int = 50_000,
          model_name: str | None = None, overwrite: bool = False, progress: bool = True,
          target=None) -> TrainResult:
    """Train a TopK coder (``k`` of ``features`` latents) on ``source``'s rows of ``site`` for ``steps``
    steps; with ``out`` resumable there (see the module docstring). With ``target`` (an `SaeSite`) a
    transcoder: ``source.rows`` gives (input, target) row pairs (`interp.sae.transcode.PairSource`) and
    the coder predicts the target from the input (sparsify's ``transcode=True``; inputs and targets have
    a scale each, and the narrower side is padded with zeros, `interp.sae.transcode`). Returns a
    `TrainResult` (``scale``: a float, or (input scale, target scale) for a transcoder). Settings out of range,
    a capture of other weights and a folder of someone else's files are refused before anything runs; a run
    that diverges saves no coder."""
    checks.train_args(k, features, steps, save_every, seed, lr, auxk_alpha, dead_tokens, out)
    check_capture_model(source, model)
    x0 = source.rows(0)
    xi, yi = split(x0)
    lr = lr if lr is not None else 2e-4 / (features / 2 ** 14) ** 0.5
    width = xi.shape[1] if yi is None else max(xi.shape[1], yi.shape[1])
    coder = C.new(width, k, features, seed, transcode=yi is not None).to(xi.device)  # where the rows are
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    scale = rms(xi) if yi is None else (rms(xi), rms(yi))
    with torch.no_grad():
        coder.b_dec.copy_(C.pad((xi if yi is None else yi).mean(0)[None], width)[0] /
                          (scale if yi is None else scale[1]))
    spec = spec_of(model, site, source, k, features, lr, auxk_alpha, dead_tokens, seed, model_name, target)

    def step_fn(batch, sc, dead):
        x, y = split(batch)
        if y is None:
            return _one_step(coder, opt, x / sc, None, dead, auxk_alpha)
        return _one_step(coder, opt, C.pad(x / sc[0], width), C.pad(y / sc[1], width), dead, auxk_alpha)
    store = Store(out, KIND, spec, overwrite=overwrite, owns=checks.OWNS) if out else None
    with (checks.tidy_on_failure(out) if out else contextlib.nullcontext()), (store or contextlib.nullcontext()):
        metrics, scale = fit(coder, opt, source, steps, step_fn, scale, store, save_every, progress,
                             f"{'transcoder' if target else 'sae'} {site.label()}", dead_tokens, x0)
        checks.finite_coder(coder, lr)
        folded = C.fold(coder, *(scale if isinstance(scale, tuple) else (scale,)))
        path = None
        if store:
            meta = {"site": site.name, "head": site.head, "model": model_name, "scale": scale, "spec": spec}
            if target is not None:
                meta.update(target=target.name, target_head=target.head, d_in=int(xi.shape[1]),
                            d_out=int(yi.shape[1]))
            path = C.save(folded, Path(out) / "coder", meta)
            save_parquet(Path(out) / "metrics.parquet", metrics)
    return TrainResult(folded, metrics, scale, path)


def _metrics(store, rows) -> pd.DataFrame:
    frames = [store.get(k) for k in store.keys() if k.startswith("metrics/")] if store else []
    frames.append(pd.DataFrame(rows))
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    return df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True) if len(df) else df
