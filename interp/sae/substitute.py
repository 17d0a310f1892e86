"""WriteSAE's substitution protocol for write dictionaries (rank-1 `interp.sae.rank1.Rank1Coder` on one
head's ``rec.write_kd``, or a TopK coder on one head's full ``rec.write``): one head's write is replaced
at chosen tokens and the recurrence continues from the replacement (`interp.sae.sites`: GDN's later delta
writes are recomputed from the edited past), then the run is compared with the clean one.

WriteSAE (Young, arXiv 2605.12770) substitutes one firing at a time: at a position where the SAE
activates an atom, the model's write is removed, the atom scaled by its activation is written in its
place, the forward pass continues, and the final token distribution is compared with the unedited model
(forward KL); the atom "wins" a firing when its KL is below that of the control (deleting the write; the
abstract calls it a matched-Frobenius-norm ablation, whose exact construction we did not find; we report
both deletion and a random rank-1 write of the atom's norm). Conditions here, each an edit of the write
W_t (K x V) at the chosen tokens:

    identity        W_t (the splice itself; must change nothing)
    reconstruction  the dictionary's reconstruction of W_t (all k active atoms)
    atom            the single top atom a_i u_i v_i^T (largest activation on W_t; zero if none is active)
    random_atom     a random rank-1 u' v'^T scaled to ||a_i u_i v_i^T||_F (fixed seed per token)
    zero            0 (the write deleted)
    mean            the mean clean write of the head over the evaluated tokens

Tokens (``where``): ``firing`` one token per example, drawn (seeded) among the non-pad tokens before its
last answer where the dictionary has an active latent (the paper's unit; examples without one drop out);
``all`` every non-pad token at once (a sustained substitution).

Measured per example against the clean run, then averaged with a 95% bootstrap interval over examples
(`interp.stats.boot_ci`): ``d_loss`` the change in mean next-token cross-entropy (all non-pad targets),
``kl`` the mean KL(clean || edited) at the answer positions at or after the first edited token (the
task's analogue of the paper's final-token KL), ``d_accuracy`` the change in answer accuracy there, and
for reconstruction / atom / random_atom ``win_vs_zero``: the fraction of examples whose KL is below the
zero-write KL (the paper's win rate against deletion)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from interp import InterpError
from interp.sae import coder as C
from interp.sae.data import family_of, wrap
from interp.sae.sites import SaeSite, splice_hooks
from interp.stats import boot_ci
from interp.tasks.vocab import PAD

CONDITIONS = ("identity", "reconstruction", "atom", "random_atom", "zero", "mean")
METRICS = ("d_loss", "kl", "d_accuracy")


class WriteCoder:
    """A write dictionary as functions of full writes W [N, K, V]: ``codes`` (acts, idx), ``recon``, ``top``
    (the single top atom a_i atom_i)."""

    def __init__(self, coder, site: SaeSite, K: int, V: int):
        from interp.sae.rank1 import Rank1Coder
        self.coder, self.K, self.V = coder, K, V
        self.rank1 = isinstance(coder, Rank1Coder)
        if site.head is None or site.kind not in (("write_kd",) if self.rank1 else ("write",)):
            need = "one head's rec.write_kd (rank-1)" if self.rank1 else "one head's rec.write (TopK coder)"
            raise InterpError(f"substitution needs a write dictionary on {need}, not {site.label()}")
        self.site = SaeSite(f"blocks.{site.layer}.rec.write", site.head)

    def codes(self, W):
        if self.rank1:
            return self.coder.encode_full(W.to(self.coder.u.dtype))
        return self.coder.encode(C.pad(W.flatten(1), self.coder.d_in).to(self.coder.dtype))[:2]

    def recon(self, W):
        if self.rank1:
            return self.coder.reconstruct_full(W.to(self.coder.u.dtype)).float()
        return C.reconstruct(self.coder, W.flatten(1).float()).float().reshape(W.shape)

    def top(self, W):
        acts, idx = self.codes(W)
        j = acts.argmax(1, keepdim=True)
        a, i = acts.gather(1, j)[:, 0].float(), idx.gather(1, j)[:, 0]
        if self.rank1:
            atom = self.coder.u[i][:, :, None] * self.coder.v[i][:, None, :]
        else:
            atom = self.coder.W_dec[i][:, :self.K * self.V].reshape(-1, self.K, self.V)
        return a[:, None, None] * atom.float()


def write_coder(model, coder, site: SaeSite) -> WriteCoder:
    """`WriteCoder` of ``coder`` on ``site`` (K from the model, V from the write's width)."""
    from interp.sae.rank1 import key_dim
    K = key_dim(model, site.layer)
    if hasattr(coder, "V"):
        return WriteCoder(coder, site, K, coder.V)
    return WriteCoder(coder, site, K, coder.d_in // K)


def edits(wc: WriteCoder, mean_write, shape, seed: int = 0) -> dict:
    """{condition: edit(x [N, K*V], rows, positions) -> x'} (module docstring); ``shape`` (B, T)."""
    K, V = wc.K, wc.V
    g = torch.Generator().manual_seed(seed)
    ru = F.normalize(torch.randn(*shape, K, generator=g), dim=-1)
    rv = F.normalize(torch.randn(*shape, V, generator=g), dim=-1)

    def wrap_(f):
        return lambda x, b, t: f(x.float().reshape(-1, K, V), b, t).reshape(x.shape).to(x.dtype)

    def random_atom(W, b, t):
        return wc.top(W).flatten(1).norm(dim=1)[:, None, None] * ru[b, t][:, :, None] * rv[b, t][:, None, :]
    return {"identity": wrap_(lambda W, b, t: W), "reconstruction": wrap_(lambda W, b, t: wc.recon(W)),
            "atom": wrap_(lambda W, b, t: wc.top(W)), "random_atom": wrap_(random_atom),
            "zero": wrap_(lambda W, b, t: torch.zeros_like(W)),
            "mean": wrap_(lambda W, b, t: mean_write.reshape(1, K, V).expand_as(W))}


def positions(wc: WriteCoder, X, batch, where: str, seed: int = 0):
    """The edit mask [B, T] (module docstring); ``X`` the head's clean writes [B, T, K*V]."""
    valid = batch.tokens != PAD
    if where == "all":
        return valid
    if where != "firing":
        raise InterpError(f"where='{where}' is not valid; valid: firing, all")
    last = batch.answer_pos.max(1).values
    before = torch.arange(valid.shape[1])[None] < last[:, None]
    acts, _ = wc.codes(X[valid].reshape(-1, wc.K, wc.V))
    fires = torch.zeros_like(valid)
    fires[valid] = (acts > 0).any(1)
    ok = valid & before & fires
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros_like(valid)
    for b in ok.any(1).nonzero().flatten().tolist():
        cand = ok[b].nonzero().flatten()
        mask[b, cand[torch.randint(len(cand), (1,), generator=g)]] = True
    return mask


def per_example(logits, clean, batch, mask) -> dict:
    """{metric: (sums [B], counts [B])} of the edited ``logits`` against the ``clean`` ones."""
    tok = batch.tokens
    tgt, ok = tok[:, 1:], tok[:, 1:] != PAD

    def ce(lg):
        return F.cross_entropy(lg[:, :-1].float().flatten(0, 1), tgt.flatten(), reduction="none").view(tgt.shape)
    d = (ce(logits) - ce(clean)) * ok
    first = torch.where(mask.any(1), mask.float().argmax(1), torch.full_like(mask[:, 0], tok.shape[1], dtype=torch.long))
    pos, ans = batch.answer_pos, batch.answers
    use = (pos >= first[:, None]) & (pos >= 0)
    idx = pos.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1])
    lp, lq = (F.log_softmax(x.float(), -1).gather(1, idx) for x in (clean, logits))
    kl = (lp.exp() * (lp - lq)).sum(-1) * use
    hit = ((lq.argmax(-1) == ans).float() - (lp.argmax(-1) == ans).float()) * use
    n = use.sum(1).float()
    return {"d_loss": (d.sum(1), ok.sum(1).float()), "kl": (kl.sum(1), n), "d_accuracy": (hit.sum(1), n)}


def _row(cond, metric, sums, counts, n_boot, rng):
    keep = counts > 0
    s, c = sums[keep].double().numpy(), counts[keep].double().numpy()
    lo, hi = boot_ci(s, c, n_boot, rng)
    return {"section": "substitution", "metric": metric, "condition": cond,
            "value": float(s.sum() / max(c.sum(), 1e-12)), "lo": lo, "hi": hi, "n": int(keep.sum())}


@torch.no_grad()
def substitution_rows(hm, wc: WriteCoder, batch, where: str = "firing", seed: int = 0, n_boot: int = 1000,
                      conditions=CONDITIONS) -> list[dict]:
    """Rows (section ``substitution``, metric, condition, value, lo, hi, n), module docstring."""
    from interp.sae.evaluate import clean_run
    clean, X, cache = clean_run(hm, wc.site, batch.tokens)
    if X.shape[-1] != wc.K * wc.V or (not wc.rank1 and wc.coder.d_in != X.shape[-1]):
        width = f"{wc.K} x {wc.V}" if wc.rank1 else str(wc.coder.d_in)
        raise InterpError(f"the coder reads {width} wide writes but {wc.site.label()} gives {X.shape[-1]}; valid: a "
                          "coder trained on this site (of this model)")
    mask = positions(wc, X, batch, where, seed)
    if not mask.any():
        raise InterpError("no token to substitute at (the dictionary fires nowhere before an answer)")
    fns = edits(wc, X[batch.tokens != PAD].mean(0), batch.tokens.shape, seed)
    fam, rng, rows, kls = family_of(hm, wc.site.layer), np.random.default_rng(seed), [], {}
    for cond in conditions:
        lg = hm.run_with_hooks(batch.tokens, hooks=splice_hooks(wc.site, fns[cond], mask, fam, cache))
        pe = per_example(lg, clean, batch, mask)
        kls[cond] = pe["kl"]
        rows += [_row(cond, m, *pe[m], n_boot, rng) for m in METRICS]
    if "zero" in kls:
        zs, zc = kls["zero"]
        for cond in [c for c in conditions if c in ("reconstruction", "atom", "random_atom")]:
            s, c = kls[cond]
            ok = (c > 0) & (zc > 0)
            win = ((s / c.clamp(min=1)) < (zs / zc.clamp(min=1))).float() * ok
            rows.append(_row(cond, "win_vs_zero", win, ok.float(), n_boot, rng))
    return rows


@torch.no_grad()
def substitution(model, coder, site: SaeSite, task: str = "mqar", knobs: dict | None = None, n: int = 256,
                 seed: int = 999_999_937, where: str = "firing", n_boot: int = 1000, model_name: str | None = None):
    """The substitution protocol on held-out ``tasks.generate(task, n, seed=seed)``: an
    `interp.sae.result.SaeEval` of `substitution_rows`."""
    from interp import tasks as T
    from interp.sae.result import SaeEval
    hm, knobs = wrap(model), dict(knobs or {})
    wc = write_coder(model, coder, site)
    batch = T.generate(task, n, seed=seed, **knobs)
    rows = substitution_rows(hm, wc, batch, where, n_boot=n_boot)
    spec = {"model": model_name, "site": site.label(), "task": task, "knobs": knobs, "n": n, "seed": seed,
            "where": where, "coder": "rank1" if wc.rank1 else "sae", "protocol": "writesae-substitution",
            "k": coder.k if wc.rank1 else coder.cfg.k, "features": coder.num_latents}
    return SaeEval.from_rows(rows, spec)
