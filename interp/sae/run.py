"""One evaluation of a dictionary on one site: quality, splicing, ground truth and interchange on
held-out task data, gathered into an `interp.sae.result.SaeEval`.

Held-out data: ``tasks.generate(task, n, seed=seed)`` and ``tasks.make_pairs(task, n_pairs, seed=seed)``
with ``seed`` default `EVAL_SEED`, apart from the training streams' seeds (``seed * 1_000_003 + step``)."""
from __future__ import annotations

import torch

from interp import InterpError
from interp import tasks as T
from interp.sae import evaluate as E
from interp.sae.data import wrap
from interp.sae.groundtruth import groundtruth
from interp.sae.interchange import interchange
from interp.sae.result import SaeEval
from interp.tasks.vocab import PAD

EVAL_SEED = 999_999_937


def _device(model):
    """The device of the model's first parameter (evaluation data goes there; coders must be there too)."""
    return next(wrap(model).model.parameters()).device


def _gt_rows(table, need, target):
    rows = []
    for r in table.itertuples():
        var = f"{target}={r.value}"
        for m in ("auroc", "f1", "fires", "auroc_null"):
            rows.append({"section": "groundtruth", "metric": m, "variable": var, "feature": r.feature,
                         "value": getattr(r, m), "n": r.n_pos})
    if need is not None:
        for r in need.itertuples():
            rows.append({"section": "needed", "metric": "accuracy", "condition": "raw" if r.m == 0 else f"m={r.m}",
                         "variable": target, "value": r.accuracy, "n": r.n_features})
        hit = need[(need.m > 0) & need.reaches]
        rows.append({"section": "needed", "metric": "n_needed", "variable": target,
                     "value": float(hit.n_features.min()) if len(hit) else float("nan"), "n": len(need)})
    return rows


@torch.no_grad()
def causal_rows(hm, coder, site, X, batch, task: str, knobs: dict, n_pairs: int = 256, seed: int = EVAL_SEED,
                target: str = "bound_value", where: str = "answer", offset: int = 0, n_align: int = 1,
                seeds=(0, 1, 2, 3, 4), probe: bool = True) -> list[dict]:
    """The ground-truth, needed and interchange rows of ``coder`` (a TopK coder on ``site`` or an
    `interp.sae.views.Latents`; ``X``: its read site's vectors [B, T, d] on ``batch``). The ranking keeps the top
    max(16, ``n_align``) latents per value, so that ``n_align`` aligned latents are swapped."""
    from interp.sae.checks import integer
    integer("n_align", n_align, 1, coder.num_latents)
    integer("n_pairs", n_pairs)
    table, ranking, need = groundtruth(coder, X, batch, target, where, offset, top=max(16, n_align), probe=probe)
    rows = _gt_rows(table, need, target)
    pairs = T.make_pairs(task, n_pairs, seed=seed, **knobs).to(X.device)
    for r in interchange(hm, site, coder, pairs, ranking, n_align=n_align, seeds=seeds):
        rows += [{"section": "interchange", "metric": m, "condition": r["condition"],
                  "variable": "" if r["seed"] is None else f"seed={r['seed']}", "value": r[m], "n": r["n"]}
                 for m in ("iia", "changed", "n_features")]
    return rows


@torch.no_grad()
def run_eval(model, coder, site, task: str = "mqar", knobs: dict | None = None, n: int = 256, n_pairs: int = 256,
             seed: int = EVAL_SEED, target: str | None = "bound_value", where: str = "answer", offset: int = 0,
             n_align: int = 1, seeds=(0, 1, 2, 3, 4), probe: bool = True, model_name: str | None = None,
             dense_threshold: float = 0.1) -> SaeEval:
    """Evaluate ``coder`` on ``site`` of ``model`` (sections of `SaeEval`); ``target=None`` skips ground
    truth and interchange."""
    hm, knobs = wrap(model), dict(knobs or {})
    batch = T.generate(task, n, seed=seed, **knobs).to(_device(model))  # where the model is
    _, X, _ = E.clean_run(hm, site, batch.tokens)
    q = E.quality(coder, X[batch.tokens != PAD], dense_threshold)
    rows = [{"section": "quality", "metric": k, "value": float(v), "n": q["rows"]} for k, v in q.items() if k != "rows"]
    for r in E.splice(hm, site, coder, batch):
        rows += [{"section": "splice", "metric": m, "condition": r["condition"], "value": r[m], "n": n}
                 for m in ("accuracy", "answer_ce", "kl", "d_accuracy", "d_answer_ce")]
    if target is not None:
        rows += causal_rows(hm, coder, site, X, batch, task, knobs, n_pairs=n_pairs, seed=seed, target=target,
                            where=where, offset=offset, n_align=n_align, seeds=seeds, probe=probe)
    spec = {"model": model_name, "site": site.label(), "task": task, "knobs": knobs, "n": n, "n_pairs": n_pairs,
            "seed": seed, "target": target, "where": where, "offset": offset, "n_align": n_align,
            "k": coder.cfg.k, "features": coder.num_latents}
    return SaeEval.from_rows(rows, spec)


def run_eval_rank1(model, coder, site, task: str = "mqar", knobs: dict | None = None, n: int = 256,
                   seed: int = 999_999_937, model_name: str | None = None, dense_threshold: float = 0.1,
                   target: str | None = None, **causal):
    """Quality on held-out ``tasks.generate(task, n, seed=seed)`` writes of ``site`` (one head's
    ``rec.write_kd``) and splicing: that head's writes replaced at every non-pad token by the
    reconstruction (read from the write the re-run recurrence computes), the recurrence continuing
    (`interp.sae.sites`; conditions sae / mean / clean). With ``target`` (a task label) also ground truth
    and interchange of the latents (`interp.sae.run.causal_rows` on `interp.sae.views.rank1_view`;
    ``causal``: its other options). An `interp.sae.result.SaeEval`."""
    from interp.sae.data import site_vectors
    from interp.sae.rank1 import check_site, quality, split_kd
    from interp.sae.sites import SaeSite
    from interp.sae.views import rank1_view
    check_site(site)
    hm, knobs = wrap(model), dict(knobs or {})
    batch = T.generate(task, n, seed=seed, **knobs).to(_device(model))
    X, _ = site_vectors(hm, site, batch.tokens)
    if X.shape[-1] != coder.K + coder.V:
        raise InterpError(f"the rank-1 coder reads {coder.K} + {coder.V} wide write_kd rows but {site.label()} gives "
                          f"{X.shape[-1]}; valid: a coder trained on this site (of this model)")
    q = quality(coder, *split_kd(X[batch.tokens != PAD], coder.K), dense_threshold)
    rows = [{"section": "quality", "metric": k, "value": float(v), "n": q["rows"]} for k, v in q.items() if k != "rows"]
    full = SaeSite(f"blocks.{site.layer}.rec.write", site.head)

    def edit(x, b, t):
        W = x.reshape(-1, coder.K, coder.V)
        return coder.reconstruct_full(W.to(coder.u.dtype)).reshape(x.shape).to(x.dtype)
    for r in E.splice(hm, full, coder, batch, edit=edit):
        rows += [{"section": "splice", "metric": m, "condition": r["condition"], "value": r[m], "n": n}
                 for m in ("accuracy", "answer_ce", "kl", "d_accuracy", "d_answer_ce")]
    if target is not None:
        rows += causal_rows(hm, rank1_view(coder, site), site, X, batch, task, knobs, seed=seed, target=target,
                            **causal)
    spec = {"model": model_name, "site": site.label(), "task": task, "knobs": knobs, "n": n, "seed": seed,
            "k": coder.k, "features": coder.num_latents, "coder": "rank1", "target": target, **causal}
    return SaeEval.from_rows(rows, spec)
