"""How good a dictionary is as a stand-in for its site: reconstruction (fraction of variance
unexplained, dead and dense latents) and splicing (the site replaced by its reconstruction inside the
model's forward; for ``rec.state`` and the writes the recurrence continues from the reconstruction,
`interp.sae.sites`), reported as the change in answer accuracy, answer loss and KL to the clean run.

Baselines in the same table: ``mean`` replaces the site by its mean vector over the evaluated tokens
(what "no information" costs), ``clean`` is the unedited model."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from interp import InterpError
from interp.sae import coder as C
from interp.sae.data import family_of
from interp.tasks.vocab import PAD


@torch.no_grad()
def quality(coder, X, dense_threshold: float = 0.1, Y=None) -> dict:
    """FVU (sum of squared errors over the total variance of the target: ``X`` [N, d], or ``Y`` [N, d'] for
    a transcoder reading X), ``dead_frac`` (latents that never fire on X), ``dense_frac`` (latents firing
    on more than ``dense_threshold`` of the rows), ``l0`` (mean active latents per row) and ``rows``. Rows of
    another width than the coder's, no rows, and targets that do not vary (FVU undefined) are refused."""
    check_width(coder, X.shape[-1], None if Y is None else Y.shape[-1])
    Y = X if Y is None else Y
    if X.shape[0] == 0 or Y.shape[0] != X.shape[0]:
        raise InterpError(f"quality needs rows: got {X.shape[0]} input and {Y.shape[0]} target rows; valid: as many "
                          "of each, at least 2")
    acts, idx, _ = coder.encode(C.pad(X, coder.d_in).to(coder.dtype))
    rec = coder.decode(acts, idx)[:, :Y.shape[1]]
    total = (Y - Y.mean(0)).pow(2).sum()
    if not total > 0:
        raise InterpError(f"FVU is undefined here: the {Y.shape[0]} rows do not vary (total variance {float(total):g});"
                          " valid: at least 2 rows that differ")
    fvu = (Y - rec).pow(2).sum() / total
    counts = torch.zeros(coder.num_latents, device=idx.device)
    counts.index_add_(0, idx[acts > 0].flatten(), torch.ones(int((acts > 0).sum()), device=idx.device))
    freq = counts / X.shape[0]
    return {"fvu": float(fvu), "dead_frac": float((counts == 0).float().mean()),
            "dense_frac": float((freq > dense_threshold).float().mean()), "l0": float((acts > 0).sum(1).float().mean()),
            "rows": int(X.shape[0])}


def check_width(coder, d_x: int, d_y: int | None = None):
    """Refuse rows the coder does not read: an autoencoder reads and writes ``coder.d_in``-wide rows, a
    transcoder the wider of its input and target (`interp.sae.transcode`)."""
    want = d_x if d_y is None else max(d_x, d_y)
    if want != coder.d_in:
        site = f"{d_x}" if d_y is None else f"{d_x} (input) and {d_y} (target)"
        raise InterpError(f"the coder is {coder.d_in} wide but the site's rows are {site} wide; valid: a coder "
                          "trained on this site (of this model)")


def answer_metrics(logits, batch, ref_logp=None) -> dict:
    """Accuracy and mean cross-entropy of the answers at ``batch.answer_pos``; with ``ref_logp`` (the
    clean run's log-probabilities there) also the mean KL(clean || this run)."""
    pos, ans = batch.answer_pos, batch.answers
    valid = pos >= 0
    lp = F.log_softmax(logits.float(), -1).gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1]))
    pred = lp.argmax(-1)
    ce = -lp.gather(2, ans.clamp(min=0)[..., None])[..., 0]
    out = {"accuracy": float(((pred == ans) & valid).sum() / valid.sum()), "answer_ce": float(ce[valid].mean())}
    if ref_logp is not None:
        kl = (ref_logp.exp() * (ref_logp - lp)).sum(-1)
        out["kl"] = float(kl[valid].mean())
    return out, lp


@torch.no_grad()
def clean_run(hm, site, tokens, attention_mask=None):
    """(logits, vectors [B, T, d], the layer's scan inputs) of one clean forward (``attention_mask``: the
    tokens' padding mask)."""
    from interp.sae.sites import vectors
    fam = family_of(hm, site.layer)
    names = list(dict.fromkeys(site.cache_names(fam) + (site.input_names(fam) if site.kind != "resid" and
                                                        site.kind != "readout" else [])))
    logits, cache = hm.run_with_cache(tokens, names=names, attention_mask=attention_mask)
    return logits, vectors(site, cache, fam), cache


@torch.no_grad()
def splice(hm, site, coder, batch, mask=None, edit=None, hooks=()) -> list[dict]:
    """One row per condition (clean, sae, mean): accuracy, answer_ce, kl and their change from clean,
    with the site replaced where ``mask`` [B, T] is set (default: every non-pad token) by the coder's
    reconstruction (or ``edit(x, rows, positions)``, run with the extra ``hooks`` before the splice's)."""
    from interp.sae.sites import splice_hooks
    fam = family_of(hm, site.layer)
    mask = (batch.tokens != PAD) if mask is None else mask
    logits, X, cache = clean_run(hm, site, batch.tokens)
    base, ref = answer_metrics(logits, batch)
    mu = X[mask].mean(0)
    edits = {"sae": edit or (lambda x, b, t: C.reconstruct(coder, x).to(x.dtype)),
             "mean": lambda x, b, t: mu.expand_as(x).clone()}
    rows = [{"condition": "clean", **base, "kl": 0.0}]
    for name, fn in edits.items():
        lg = hm.run_with_hooks(batch.tokens, hooks=list(hooks) + splice_hooks(site, fn, mask, fam, cache))
        m, _ = answer_metrics(lg, batch, ref)
        rows.append({"condition": name, **m})
    for r in rows:
        r.update(d_accuracy=r["accuracy"] - base["accuracy"], d_answer_ce=r["answer_ce"] - base["answer_ce"])
    return rows
