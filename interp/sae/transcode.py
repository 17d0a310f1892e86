"""Transcoders: a TopK sparse coder (eai-sparsify, ``transcode=True``) that predicts one site (the target,
e.g. ``blocks.{i}.mlp_out`` or the factored write ``blocks.{i}.rec.write_kd``) from an earlier one (the
input, e.g. ``blocks.{i}.resid_mid``, ``rec.readout`` or ``resid_pre``): paired training rows, the
prediction, and its evaluation (FVU of the target, dead / dense latents, and splicing: the target site
replaced by the prediction from the input as the spliced run computes it, the recurrence continuing for
state / write targets, `interp.sae.sites`).

The input must be a hooked vector (a residual site or ``rec.readout``) computed before the target:
within block i the order is resid_pre < rec.state / writes < rec.readout < mixer_out < resid_mid <
mlp_out < resid_post. sparsify's coders have a single width: a transcoder between sites of different
widths reads and writes the wider one with the narrower side zero-padded (`interp.sae.coder.pad`; the
widths are in the saved ``interp.json``), so the saved coder still loads with
``SparseCoder.load_from_disk`` (use it as ``coder(pad(x))[:, :d_out]``)."""
from __future__ import annotations

import torch

from interp import InterpError
from interp import tasks as T
from interp.sae import coder as C
from interp.sae import evaluate as E
from interp.sae.data import _shuffle, family_of, step_seed, wrap
from interp.sae.result import SaeEval
from interp.sae.sites import SaeSite, vectors
from interp.tasks.vocab import PAD

ORDER = {"resid_pre": 0, "rec.state": 1, "rec.write": 1, "rec.write_kd": 1, "rec.readout": 2, "mixer_out": 3,
         "resid_mid": 4, "mlp_out": 5, "resid_post": 6}


def _pos(site: SaeSite):
    return site.layer, ORDER[site.name.split(".", 2)[2]]


def check_pair(inp: SaeSite, out: SaeSite):
    """Refuse a transcoder whose input is not a hooked vector computed before its target."""
    if inp.kind not in ("resid", "readout"):
        raise InterpError(f"a transcoder's input must be a residual site or rec.readout, not {inp.name}")
    if _pos(inp) >= _pos(out):
        raise InterpError(f"a transcoder's input must come before its target: {inp.name} is not before "
                          f"{out.name} (order in a block: {', '.join(ORDER)})")


def pair_vectors(hm, inp: SaeSite, out: SaeSite, tokens):
    """(input vectors [B, T, d_in], target vectors [B, T, d_out]) of one forward of ``tokens``."""
    fams = [family_of(hm, s.layer) for s in (inp, out)]
    for s, f in zip((inp, out), fams):
        if s.kind != "resid" and f is None:
            raise InterpError(f"block {s.layer} has no recurrent mixer: {s.name} does not exist there")
    names = list(dict.fromkeys(inp.cache_names(fams[0]) + out.cache_names(fams[1])))
    with torch.no_grad():
        _, cache = hm.run_with_cache(tokens, names=names)
    return vectors(inp, cache, fams[0]), vectors(out, cache, fams[1])


class PairSource:
    """(input rows, target rows) streamed from the model, ``batch_size`` fresh task examples per step, every
    non-pad token, both shuffled by the same seeded permutation (a pure function of (seed, step), as
    `interp.sae.data.ModelSource`)."""

    def __init__(self, model, site: SaeSite, target: SaeSite, task: str = "mqar", knobs: dict | None = None,
                 batch_size: int = 32, seed: int = 0, device: str = "cpu"):
        check_pair(site, target)
        self.hm, self.site, self.target, self.task = wrap(model), site, target, task
        self.knobs, self.batch_size, self.seed, self.device = dict(knobs or {}), batch_size, seed, device

    def spec(self) -> dict:
        return {"kind": "model-pairs", "task": self.task, "knobs": self.knobs, "batch_size": self.batch_size,
                "seed": self.seed}

    def rows(self, step: int):
        b = T.generate(self.task, self.batch_size, seed=step_seed(self.seed, step), **self.knobs).to(self.device)
        x, y = pair_vectors(self.hm, self.site, self.target, b.tokens)
        keep = b.tokens != PAD
        return _shuffle(x[keep], self.seed, step), _shuffle(y[keep], self.seed, step)


def predict(coder, x, d_out: int):
    """The transcoder's prediction of the target from input rows ``x`` [N, d_in]: ``[N, d_out]``."""
    return C.reconstruct(coder, C.pad(x, coder.d_in))[:, :d_out]


def input_hook(site: SaeSite, box: dict):
    """A hook (name, fn) that keeps the input site's tensor of the running forward in ``box['x']``."""
    name = site.name if site.kind == "resid" else f"blocks.{site.layer}.rec.readout"

    def fn(x, _name):
        box["x"] = x
    return name, fn


@torch.no_grad()
def run_eval_transcoder(model, coder, site: SaeSite, target: SaeSite, task: str = "mqar",
                        knobs: dict | None = None, n: int = 256, seed: int = 999_999_937,
                        model_name: str | None = None, dense_threshold: float = 0.1, target_label: str | None = None,
                        **causal) -> SaeEval:
    """Quality (FVU of the target, dead / dense, l0) on held-out ``tasks.generate(task, n, seed=seed)`` and
    splicing: the target replaced at every non-pad token by the prediction from the input read live in
    the spliced run (``sae`` condition; ``mean``: the target's mean, ``clean``: unedited). With
    ``target_label`` (a task label) also ground truth (latents read from the input site) and interchange
    (their change decoded into the target site; `interp.sae.run.causal_rows`, ``causal`` its options)."""
    check_pair(site, target)
    hm, knobs = wrap(model), dict(knobs or {})
    batch = T.generate(task, n, seed=seed, **knobs)
    X, Y = pair_vectors(hm, site, target, batch.tokens)
    keep = batch.tokens != PAD
    d_out = Y.shape[-1]
    q = E.quality(coder, X[keep], dense_threshold, Y=Y[keep])
    rows = [{"section": "quality", "metric": k, "value": float(v), "n": q["rows"]} for k, v in q.items() if k != "rows"]
    box = {}

    def edit(y, b, t):
        x = site.flat(box["x"][b, t][:, None])[:, 0]
        return predict(coder, x, d_out).to(y.dtype)
    for r in E.splice(hm, target, coder, batch, edit=edit, hooks=[input_hook(site, box)]):
        rows += [{"section": "splice", "metric": m, "condition": r["condition"], "value": r[m], "n": n}
                 for m in ("accuracy", "answer_ce", "kl", "d_accuracy", "d_answer_ce")]
    if target_label is not None:
        from interp.sae.run import causal_rows
        from interp.sae.views import transcoder_view
        rows += causal_rows(hm, transcoder_view(coder, site, target, d_out), site, X, batch, task, knobs,
                            seed=seed, target=target_label, **causal)
    spec = {"model": model_name, "site": site.label(), "target_site": target.label(), "task": task,
            "knobs": knobs, "n": n, "seed": seed, "k": coder.cfg.k, "features": coder.num_latents,
            "coder": "transcoder", "target": target_label, **causal}
    return SaeEval.from_rows(rows, spec)
