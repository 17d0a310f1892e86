"""Causal test of the latents that align with a variable: on clean/corrupted pairs (one fact differs,
so does the answer; `interp.tasks.make_pairs`), run the corrupted prompt (base) with the site at the
answer position changed so that chosen latents take their values from the clean prompt (source):

    x' = x_base + decode(z') - decode(z_base),   z' = z_base with z'[F] = z_source[F]

(the base keeps its own reconstruction error). Interchange accuracy (IIA) = the fraction of pairs,
among those the model answers correctly on both prompts, whose edited answer is the clean one. Padded
pairs (`interp.tasks.pad_pairs`) run with their mask, each at its own answer position (`interchange_preds`).
Conditions: ``aligned`` F = the top ``n_align`` latents (by AUROC, `interp.sae.groundtruth`) of the
clean and of the corrupted answer's value; ``random`` the same number of random latents per pair (one
row per seed); ``all`` every latent (z' = z_source; the ceiling of what the dictionary carries).

``coder`` may be an `interp.sae.views.Latents`: latents read at its ``read`` site, the change
decode(z') - decode(z_base) added at its ``edit`` site (a transcoder: input -> target; a rank-1
dictionary: the head's ``write_kd`` -> its full write, spliced through the recurrence)."""
from __future__ import annotations

import torch

from interp.sae.data import family_of
from interp.sae.sites import splice_hooks
from interp.sae.views import as_view
from interp.tasks import VOCAB


def value_of(token: int) -> int:
    """The variable value an answer token names (task values are number words), -1 if none."""
    w = VOCAB.decode([int(token)])[0]
    return int(w) if w.isdigit() else -1


@torch.no_grad()
def _run(hm, site, tokens, ap, delta, cache, attention_mask=None):
    """Answer-position predictions of ``tokens`` (``attention_mask``: their padding) with ``delta`` [N, d]
    added to the site at ``ap``."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    mask[rows, ap] = True
    hk = splice_hooks(site, lambda x, b, t: x + delta[b].to(x.dtype), mask, family_of(hm, site.layer), cache)
    return hm.run_with_hooks(tokens, hooks=hk, attention_mask=attention_mask)[rows, ap].argmax(-1)


def _sets(ranking, a, b, n_align):
    return [sorted(set(ranking.get(int(x), [])[:n_align]) | set(ranking.get(int(y), [])[:n_align]))
            for x, y in zip(a.tolist(), b.tolist())]


@torch.no_grad()
def interchange(hm, site, coder, pairs, ranking: dict, n_align: int = 1, seeds=(0, 1, 2, 3, 4),
                only_correct: bool = True) -> list[dict]:
    """Rows (condition, seed, iia, changed, n_features, n): see the module docstring (``only_correct=False``
    keeps every pair, also those the model gets wrong)."""
    idx, conds = interchange_preds(hm, site, coder, pairs, ranking, n_align, seeds, only_correct)
    if idx.numel() == 0:
        return []
    ca, xa = pairs.clean_answer[idx], pairs.corrupted_answer[idx]
    return [{"condition": name, "seed": seed, "iia": float((pred == ca).float().mean()),
             "changed": float((pred != xa).float().mean()), "n_features": nf, "n": int(idx.numel())}
            for name, seed, pred, nf in conds]


@torch.no_grad()
def interchange_preds(hm, site, coder, pairs, ranking: dict, n_align: int = 1, seeds=(0, 1, 2, 3, 4),
                      only_correct: bool = True) -> tuple:
    """The per-pair results of `interchange`: (the pairs it keeps [K] (indices into ``pairs``), [(condition,
    seed, the edited base runs' answers [K], mean latents changed)]). Padded pairs (``pairs.attention_mask``)
    run with their mask, each read (and edited) at its own answer position, so each pair's answers equal those
    of its length group run alone (the ``random`` sets are drawn per pair in batch order, so they are not)."""
    from interp.sae.evaluate import clean_run
    from interp.tasks.padded import pair_span
    am, _ = pair_span(pairs)           # (checks that the answer positions are real tokens)
    view = as_view(coder, site)
    ap, rows = pairs.answer_pos, torch.arange(pairs.n, device=pairs.answer_pos.device)
    lc, Xc, _ = clean_run(hm, view.read, pairs.clean, am)
    lx, Xx, cache = clean_run(hm, view.read, pairs.corrupted, am)
    if view.edit != view.read:
        cache = clean_run(hm, view.edit, pairs.corrupted, am)[2]
    ok = (lc[rows, ap].argmax(-1) == pairs.clean_answer) & (lx[rows, ap].argmax(-1) == pairs.corrupted_answer)
    ok |= not only_correct
    idx = ok.nonzero().flatten()
    if idx.numel() == 0:
        return idx, []
    tok, ap, ca, xa = pairs.corrupted[idx], ap[idx], pairs.clean_answer[idx], pairs.corrupted_answer[idx]
    am = None if am is None else am[idx]
    cache = {k: v[idx] for k, v in cache.items()}
    xb, xs = Xx[idx, ap], Xc[idx, ap]
    zb, zs = view.encode(xb), view.encode(xs)
    va = torch.tensor([value_of(t) for t in ca])
    vb = torch.tensor([value_of(t) for t in xa])
    aligned = _sets(ranking, va, vb, n_align)
    conds = [("aligned", None, aligned)]
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        conds.append(("random", int(s), [torch.randperm(view.num_latents, generator=g)[:len(f)].tolist()
                                          for f in aligned]))
    conds.append(("all", None, None))
    out = []
    for name, seed, sets in conds:
        z = zs.clone() if sets is None else zb.clone()
        if sets is not None:
            for i, f in enumerate(sets):
                z[i, f] = zs[i, f]
        delta = view.decode(z) - view.decode(zb)
        pred = _run(hm, view.edit, tok, ap, delta, cache, am)
        nf = view.num_latents if sets is None else sum(len(f) for f in sets) / max(1, len(sets))
        out.append((name, seed, pred, float(nf)))
    return idx, out
