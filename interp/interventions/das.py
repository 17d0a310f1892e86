"""Distributed alignment search (DAS): learn an orthonormal rank-r subspace at a site that maximises
interchange intervention accuracy (Geiger et al. 2023; pyvene's LowRankRotatedSpaceIntervention).

    res = train_das(model, pairs, Site("blocks.0.rec.state", side="key"), rank=1)
    res.summary()        # das train/val/test, random (mean over seeds), full, with n kept pairs
    res.R                # [rank, width]

R = W^T with W [width, rank] kept orthonormal by ``torch.nn.utils.parametrizations.orthogonal`` (as
pyvene does), W initialised as `subspace.random_basis(width, rank, seed)`, the parametrisation set up
as pyvene's is after ``torch.manual_seed(seed)`` (`Rotation`). Training: Adam on W, minibatches of
training pairs in a seeded order (with ``cuda_graphs`` on a GPU, each full batch's pass is replayed
from a CUDA graph, `interp.interventions.graphs`),
cross-entropy of the intervened base run's logits at the answer position toward the *source's* answer;
after each epoch the validation IIA (ties: lower validation loss) decides early stopping (``patience``
epochs without improvement) and which epoch's R is kept. Only pairs the model answers correctly on both
prompts are trained on and counted. Splits are by task pair (both orders of a pair fall in one split).
The model's weights are frozen during training; source activations and the blocks before the site's
layer are computed once, not per step.
"""
from __future__ import annotations

import math
import numbers
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import hooks
from interp import InterpError
from interp.checks import check_count
from interp.interventions import graphs
from interp.interventions.intervene import (ORDERS, InterchangePairs, Interchanger, describe_positions,
                                            result_row, site_width)
from interp.interventions.plan import check_seeds
from interp.interventions.site import Site
from interp.interventions.subspace import check_basis, check_rank, random_basis


@dataclass
class DASConfig:
    """Training settings. ``split``: fractions of task pairs for train / val / test; ``seed``: the
    initial R, the split and the batch order; ``random_seeds``: the random-subspace baseline (same rank);
    ``cuda_graphs``: on a GPU, replay each full batch's pass from a CUDA graph (the eager numbers with fewer
    launches: equal R and IIA, 10.3x pyvene per epoch against 2.0x eagerly on an H100, BENCHMARKS.md section 21);
    on by default, ignored on a CPU. ``rec.state`` sites run eagerly (a state patch decides on the host which
    steps to re-scan); a model whose forward cannot be captured runs eagerly, with a warning."""
    rank: int = 1
    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 64
    patience: int = 3
    split: tuple = (0.6, 0.2, 0.2)
    seed: int = 0
    random_seeds: tuple = (0, 1, 2, 3, 4)
    order: str = "both"
    positions: object = None
    cuda_graphs: bool = True

    def check(self):
        if len(self.split) != 3 or not all(x > 0 for x in self.split) or not abs(sum(self.split) - 1) <= 1e-6:
            raise InterpError(f"split {tuple(self.split)} is not valid: three fractions (train, val, test) above 0 "
                              "summing to 1")
        for k in ("rank", "epochs", "batch_size", "patience"):
            check_count(getattr(self, k), k)
        top = torch.finfo(torch.float32).max       # (Adam's float32 state cannot hold a larger lr)
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not 0 < self.lr <= top:
            raise InterpError(f"lr {self.lr!r} is not valid; valid: finite numbers > 0 and <= {top:.3g}, e.g. 0.01")
        check_seeds(self.random_seeds, "random_seeds")
        if self.order not in ORDERS:
            raise InterpError(f"order '{self.order}' is not valid; valid: {', '.join(ORDERS)}")


class Rotation(torch.nn.Module):
    """The trainable subspace: ``weight`` W [width, rank] with orthonormal columns (orthogonal
    parametrisation, Householder map), ``R`` = W^T [rank, width]. Built exactly as pyvene builds its
    LowRankRotateLayer after ``torch.manual_seed(seed)``: W drawn by ``orthogonal_``, then the
    parametrisation registered, which completes W to a full orthogonal base with ``torch.randn`` (the
    base shapes the optimisation path, so it is seeded too). The global RNG is left as it was.
    ``init`` [rank, width] replaces the drawn W (the completion stays seeded)."""

    def __init__(self, width: int, rank: int, seed: int = 0, init=None):
        super().__init__()
        check_rank(rank, width)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            W0 = torch.empty(width, rank)
            torch.nn.init.orthogonal_(W0)
            if init is not None:
                W0 = check_basis(init, width, "init").T.contiguous()
                if W0.shape[1] != rank:
                    raise InterpError(f"init has rank {W0.shape[1]}; valid: rank {rank} (the DAS rank)")
            self.weight = torch.nn.Parameter(W0)
            torch.nn.utils.parametrizations.orthogonal(self, "weight")

    @property
    def R(self) -> torch.Tensor:
        return self.weight.T


@contextmanager
def frozen(model):
    """Parameters of ``model`` do not require gradients inside (restored on exit)."""
    ps = [p for p in model.parameters() if p.requires_grad]
    for p in ps:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in ps:
            p.requires_grad_(True)


def split_pairs(ix: Interchanger, fractions, seed: int) -> dict:
    """{'train'|'val'|'test': ordered-pair rows} from a seeded permutation of the task pairs."""
    pairs = torch.unique(ix.ip.pair)
    perm = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(int(seed)))]
    n_tr = int(round(fractions[0] * len(perm)))
    n_va = int(round(fractions[1] * len(perm)))
    parts = {"train": perm[:n_tr], "val": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}
    return {k: torch.isin(ix.ip.pair, v).nonzero().flatten() for k, v in parts.items()}


def _eval(ix: Interchanger, R, rows, ev=None) -> tuple[float, float]:
    """(IIA, mean cross-entropy toward the source answer) over the correct ``rows``; ``ev``: an
    `graphs.EvalStep` replayed for full batches of a tensor R of its shape."""
    rows = rows[ix.correct[rows]]
    if len(rows) == 0:
        return float("nan"), float("nan")
    dev = ix.src.device
    rows_d = rows.to(dev)
    graphed = ev is not None and isinstance(R, torch.Tensor) and R.shape == ev.R.shape
    hit = torch.zeros((), dtype=torch.float64, device=dev)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    with torch.no_grad():
        for s in range(0, len(rows_d), ix.batch_size):
            r = rows_d[s:s + ix.batch_size]
            h, lo = ev(R, r) if graphed and len(r) == ev.B else _hits_loss(ix, R, r)
            hit += h.double()
            loss += lo.double()
    return float(hit) / len(rows), float(loss) / len(rows)


def _hits_loss(ix: Interchanger, R, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(how many intervened base runs of ``rows`` give the source answer, their summed cross-entropy toward it)."""
    lg = ix.logits(R, rows).float()
    tgt = ix._at(ix.ip.source_answer, rows).to(lg.device)
    return (lg.argmax(-1) == tgt).sum(), F.cross_entropy(lg, tgt, reduction="sum")


def _loss(ix: Interchanger, R, rows) -> torch.Tensor:
    """Mean cross-entropy of the intervened base runs of ``rows`` toward the source answers."""
    lg = ix.logits(R, rows).float()
    return F.cross_entropy(lg, ix._at(ix.ip.source_answer, rows).to(lg.device))


def _graphs(ix: Interchanger, rot: Rotation, cfg: DASConfig, train_rows) -> tuple:
    """(GradStep | None, EvalStep | None, how): CUDA-graph replays of a training batch and an evaluation
    batch when ``cfg.cuda_graphs`` and the model is on a GPU; ``how`` says which (or why not)."""
    dev = ix.src.device
    if not cfg.cuda_graphs or not graphs.graphable(dev):
        return None, None, "off" if graphs.graphable(dev) else "off (not on a GPU)"
    if ix.site.kind == "state":
        return None, None, "off (a rec.state patch decides on the host which steps to re-scan)"
    if ix.ip.attention_mask is not None:
        return None, None, "off (padded pairs: hooks check the padding mask on the host)"
    R0 = rot.R.detach()
    try:
        step = graphs.GradStep(lambda R, r: _loss(ix, R, r), R0, train_rows[:cfg.batch_size].to(dev))
        ev = graphs.EvalStep(lambda R, r: _hits_loss(ix, R, r), R0,
                             torch.arange(min(ix.batch_size, len(ix.ip)), device=dev))
    except graphs.GraphUnavailable as e:
        warnings.warn(f"DAS runs without CUDA graphs: capturing the step failed ({e})", stacklevel=3)
        return None, None, f"off (capture failed: {e})"
    return step, ev, "on"


def fit(ix: Interchanger, rot: Rotation, train_rows, val_rows, cfg: DASConfig, progress=False):
    """Train ``rot`` on the correct ``train_rows``; returns (best R, history, best epoch, (GradStep |
    None, EvalStep | None, {"cuda_graphs": how, "seconds_capture": s})). An epoch whose validation loss or R is
    not finite (diverged) is never the best; with no other, an InterpError says to lower the learning rate."""
    train_rows = train_rows[ix.correct[train_rows]]
    if len(train_rows) == 0:
        raise InterpError("no training pair is answered correctly on both prompts: nothing to train on")
    opt = torch.optim.Adam(rot.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(int(cfg.seed))
    best, best_R, best_epoch, bad, hist = None, rot.R.detach().clone(), 0, 0, []
    dev = ix.src.device
    with frozen(ix.hm.model):
        t_cap = time.perf_counter()
        step, ev, how = _graphs(ix, rot, cfg, train_rows)
        info = {"cuda_graphs": how, "seconds_capture": time.perf_counter() - t_cap}
        for epoch in range(1, cfg.epochs + 1):
            t0, total = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=dev)
            perm = train_rows[torch.randperm(len(train_rows), generator=g)].to(dev)
            for s in range(0, len(perm), cfg.batch_size):
                r, R = perm[s:s + cfg.batch_size], rot.R
                opt.zero_grad()
                if step is not None and len(r) == step.B:
                    loss, grad = step(R, r)
                    R.backward(grad)
                else:
                    loss = _loss(ix, R, r)
                    if not loss.requires_grad:   # the patch leaves every base run as it was: no gradient
                        raise InterpError(f"the interchange at {ix.site.label()} does not depend on R on these "
                                          "pairs (the site holds the same values in both prompts), so DAS has "
                                          "nothing to learn; valid: another site, head or side")
                    loss.backward()
                opt.step()
                total += loss.detach().double() * len(r)
            total = float(total)
            t_train = time.perf_counter() - t0
            R = rot.R.detach().clone()
            v_iia, v_loss = _eval(ix, R, val_rows, ev)
            hist.append(dict(epoch=epoch, train_loss=total / len(perm), val_iia=v_iia, val_loss=v_loss,
                             seconds_train=t_train, seconds=time.perf_counter() - t0))
            if progress:
                print(f"epoch {epoch}: train loss {total / len(perm):.4f}, val IIA {v_iia:.3f} "
                      f"(loss {v_loss:.4f}), {time.perf_counter() - t0:.2f}s", flush=True)
            finite = math.isfinite(v_loss) and bool(torch.isfinite(R).all())   # a diverged epoch is never kept
            key = (v_iia if v_iia == v_iia else -1.0, -v_loss)
            if finite and (best is None or key > best):
                best, best_R, best_epoch, bad = key, R, epoch, 0
            else:
                bad += 1
                if bad >= cfg.patience or not bool(torch.isfinite(R).all()):   # (a NaN R stays NaN)
                    break
    if best is None:
        losses = ", ".join(f"{h['val_loss']:.4g}" for h in hist)
        raise InterpError(f"DAS diverged at lr {cfg.lr:g}: no epoch has a finite validation loss and subspace "
                          f"(validation losses {losses}); valid: a lower learning rate (--lr), e.g. the default 0.01")
    return best_R, hist, best_epoch, (step, ev, info)


class DASPlan:
    """A DAS run checked and prepared (`plan_das`): the `Interchanger` ``ix`` (``ix.correct``: the kept pairs),
    the config, the splits and the initial `Rotation`; `run` trains it and evaluates (a `DASResult`)."""

    def __init__(self, ix: Interchanger, cfg: DASConfig, pairs, splits: dict, rot: Rotation, t_prep: float):
        self.ix, self.cfg, self.pairs, self.splits, self.rot, self.t_prep = ix, cfg, pairs, splits, rot, t_prep

    def run(self, model_name="model", progress: bool = False):
        from interp.interventions.result import DASResult
        ix, cfg, splits, site, pairs = self.ix, self.cfg, self.splits, self.ix.site, self.pairs
        dev = ix.src.device
        R, hist, best_epoch, (_, ev, info) = fit(ix, self.rot.to(dev), splits["train"], splits["val"], cfg, progress)
        rows = []

        def add(label, Rx, r, split, seed):
            v, _ = _eval(ix, Rx, splits[split], ev)
            rows.append(result_row(site, ix, model_name, pairs, cfg.positions, label, r, split, seed, v,
                                   int(ix.correct[splits[split]].sum()), len(splits[split])))
        for split in ("train", "val", "test"):
            add("das", R, cfg.rank, split, -1)
        for sd in cfg.random_seeds:
            add("random", random_basis(ix.width, cfg.rank, sd).to(dev), cfg.rank, "test", sd)
        add("full", None, ix.width, "test", -1)
        res = DASResult(rows)
        res.R = R.cpu()
        res.attrs["history"] = hist
        res.attrs["spec"] = {**_spec(site, ix, cfg, pairs, splits, best_epoch, model_name, self.t_prep), **info}
        return res


def plan_das(model, pairs, site, rank: int | None = None, config: DASConfig | None = None,
             batch_size_eval: int | None = None, init=None, **overrides) -> DASPlan:
    """Every check of `train_das` and its preparation (one pass over the prompts), before any training: the
    settings, the site and rank, ``init``, the positions and order, a kept pair in each split."""
    try:
        cfg = DASConfig(**{**(asdict(config) if config else {}), **overrides,
                           **({"rank": rank} if rank is not None else {})})
    except TypeError:
        bad = next((k for k in overrides if k not in DASConfig.__dataclass_fields__), None)
        raise InterpError(f"'{bad}' is not a DAS setting; valid: {', '.join(DASConfig.__dataclass_fields__)}") from None
    cfg.check()
    site = Site(site) if isinstance(site, str) else site
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    first = pairs.base[:1] if isinstance(pairs, InterchangePairs) else pairs.clean[:1]
    from interp.models import input_device
    width = site_width(hm, site, first.to(input_device(hm.model)))
    check_rank(cfg.rank, width)                                      # before the costly preparation
    rot = Rotation(width, cfg.rank, cfg.seed, init)
    t0 = time.perf_counter()
    ix = Interchanger(hm, pairs, site, cfg.positions, cfg.order,
                      max(cfg.batch_size, 64) if batch_size_eval is None else batch_size_eval)
    t_prep = time.perf_counter() - t0
    splits = split_pairs(ix, cfg.split, cfg.seed)
    if not int(ix.correct[splits["train"]].sum()):
        raise InterpError(f"no training pair is answered correctly on both prompts: nothing to train on ({len(pairs)} "
                          "task pairs); valid: a model that solves the task, more pairs (--n)")
    empty = [k for k in ("val", "test") if not int(ix.correct[splits[k]].sum())]
    if empty:
        raise InterpError(f"{len(pairs)} task pairs leave no kept pair (right on both prompts) in the {empty[0]} split "
                          f"of {tuple(cfg.split)}; valid: more pairs (--n) or a larger {empty[0]} fraction")
    return DASPlan(ix, cfg, pairs, splits, rot, t_prep)


def train_das(model, pairs, site, rank: int | None = None, config: DASConfig | None = None, model_name="model",
              batch_size_eval: int | None = None, init=None, progress: bool = False, **overrides):
    """Learn a rank-``rank`` subspace at ``site`` (a `Site` or a hook name) on ``pairs`` (a
    `tasks.PairBatch`). ``config`` (or keyword overrides of `DASConfig` fields) sets the training.
    Returns a `DASResult`: rows ``das`` (train/val/test), ``random`` (test, one per random seed) and
    ``full`` (test); ``.R`` the learned subspace; ``attrs['spec']`` every setting, seed and split.
    A run whose every epoch diverges (NaN or inf) is refused: lower ``lr``."""
    return plan_das(model, pairs, site, rank, config, batch_size_eval, init, **overrides).run(model_name, progress)


def _spec(site: Site, ix: Interchanger, cfg: DASConfig, pairs, splits, best_epoch, model_name, t_prep) -> dict:
    cfgd = asdict(cfg)
    cfgd["positions"] = describe_positions(cfg.positions, site)
    return dict(model=model_name, site=site.name, head=site.head, side=site.side, layer=site.layer,
                width=ix.width, config=cfgd, task=dict(getattr(pairs, "meta", {}) or {}), n_pairs=len(pairs),
                n_ordered=len(ix.ip), n_kept=int(ix.correct.sum()), best_epoch=best_epoch,
                seconds_prepare=t_prep, torch=torch.__version__,
                splits={k: sorted(set(ix.ip.pair[v].tolist())) for k, v in splits.items()},
                kept={k: int(ix.correct[v].sum()) for k, v in splits.items()})
