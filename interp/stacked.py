"""Train several zoo models of one config at once as one stacked module (``interp train`` runs, batched).

At d=128 a training step of one small model is bound by per-op launch overhead, so one process per
run leaves the GPU mostly idle. `train_stacked` trains M runs (`interp.train.TrainConfig` objects
that may differ only in ``out``, ``seed``, ``lr``, ``tasks``, ``knobs``, ``grid_max`` and ``command``;
any other difference is refused, `check_stack`) with the kernels of one:

* parameters: each model is built as `interp.train` builds it (``torch.manual_seed(seed)`` then
  ``HybridLM``) and copied into one flat buffer ``[M, N]`` (row m = model m, the AdamW decay group
  first); each parameter is a leaf view ``[M, *shape]`` of it, its gradient a view of one flat
  gradient buffer, so the optimizer is a few elementwise ops on ``[M, N]`` per step;
* forward: ``torch.vmap`` over ``torch.func.functional_call`` of one zoo model. The parameter-free
  kernels (attention's ``attn_fn``, the recurrent ``scan_fn``: fla's Triton kernels on CUDA, which
  vmap cannot enter) run once on all models' rows (`_Fold`: the model dim merged into the batch
  dim); a scan that takes per-model tensors besides its rows (Mamba2's A, D) runs once per model;
* data: each model draws the batches its own single run would (`interp.train._next_batch` with
  its seed, in ``workers`` DataLoader processes); sequences of unequal length are padded at the end
  (outputs of causal models at the real positions do not change) and the padding is not supervised;
* optimizer (`StackedAdamW`): AdamW (betas 0.9, 0.95, eps 1e-8, weight decay on the parameters
  with >= 2 dims only) with a learning-rate vector (each model its own ``lr``, the warm-up + cosine
  schedule of `interp.train.lr_at`) and gradient-norm clipping per model, written out elementwise
  in the order of ``torch.optim.AdamW``'s single-tensor path and ``clip_grad_norm_``;
* the induction warm-up runs per model as in a single run (each model's held-out check ends its own
  warm-up; a model still warming up gets induction batches, the others their task batches);
* output: each ``cfg.out`` gets what `interp.train.train` writes (model.safetensors, config.json,
  meta.json, train_log.jsonl, COMMAND.txt, ``checkpoint/`` with a ``torch.optim.AdamW`` state
  dict), so `interp.zoo.load_model` and the toolkit cannot tell the difference, and either trainer
  resumes the other's checkpoint (a stack resumes only when all its runs have one at the same step);
  a log row's ``tokens_per_s`` is the run's tokens over the stack's wall time.

On a GPU, each step's pass (forward, loss, backward, clipping; not the optimizer) is replayed from a CUDA
graph per batch shape (`interp.stacked_graph`; ``cuda_graphs=False`` runs it eagerly): on an H100 and an
H200 the same losses and weights as the eager stack, bit for bit, in less time (BENCHMARKS.md sections 33-34).

The losses and weights equal M single runs' up to float rounding (batched matmuls and reductions
sum in another order; tests/test_stacked.py states the tolerance). bench/bench_train_many.py
measures runs finished per GPU-hour against one process per run.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp import InterpError
from interp import tasks as T
from interp.devices import resolve_device
from interp.train import (INDUCTION_CHECK, TrainConfig, _append_log, _check_config, _checkpoint_dir, _finish,
                          _held_out_row, _make_optimizer, _make_out, _next_batch, _warmup_over, _warn_config,
                          common_checkpoints, drop_old_checkpoint, induction_batch, load_trainer_state, lr_at,
                          swap_checkpoint, write_checkpoint)
from interp.interventions import graphs
from interp.runfolder import already_trained, cut_log, open_run
from interp.stacked_graph import ShapeGraphs
from interp.zoo import HybridLM, ZooConfig, load_model

MAY_DIFFER = ("out", "seed", "lr", "tasks", "knobs", "grid_max", "command")


def check_stack(cfgs) -> None:
    """Refuse (InterpError) runs that cannot train as one stack: none, two with one ``out``, or two
    that differ in a field other than `MAY_DIFFER`."""
    if not cfgs:
        raise InterpError("no runs to stack; valid: one or more TrainConfigs")
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) < len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        raise InterpError(f"two stacked runs write to out='{dup}'; valid: one output directory per run")
    first = dataclasses.asdict(cfgs[0])
    for i, c in enumerate(cfgs[1:], 1):
        for name, v in dataclasses.asdict(c).items():
            if name not in MAY_DIFFER and v != first[name]:
                raise InterpError(f"stacked runs differ in {name}: run 0 has {first[name]!r}, run {i} has {v!r}; "
                                  f"valid: runs that differ only in {', '.join(MAY_DIFFER)}")


class _Fold(torch.autograd.Function):
    """``fn(*args, **kw)`` for a parameter-free function whose tensors with >= 3 dims are rows
    ``[B, T, ...]`` treated independently (``attn_fn``, ``scan_fn``), called under ``torch.vmap``
    over M models: one call on ``[M * B, T, ...]``, or M calls where a per-model tensor of fewer
    dims comes along (Mamba2's A, D). Only its vmap rule runs, and autograd records the ops that
    rule calls; outside vmap (never, in `StackedModel`) its backward refuses."""

    @staticmethod
    def forward(fn, npos, names, *values):
        return fn(*values[:npos], **dict(zip(names, values[npos:])))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("interp.stacked folds kernels under torch.vmap only")

    @staticmethod
    def vmap(info, in_dims, fn, npos, names, *values):
        M, dims = info.batch_size, in_dims[3:]
        batched = [torch.is_tensor(v) and d is not None for v, d in zip(values, dims)]
        one = []  # whether fn returns one tensor (else a tuple of tensors / None)

        def call(vs) -> tuple:
            out = fn(*vs[:npos], **dict(zip(names, vs[npos:])))
            one.append(torch.is_tensor(out))
            return (out,) if one[-1] else tuple(out)
        if any(b and v.dim() < 4 for v, b in zip(values, batched)):  # per-model, not rows (Mamba2's A, D)
            per = [call([v.select(d, i) if b else v for v, d, b in zip(values, dims, batched)]) for i in range(M)]
            out = tuple(None if o[0] is None else torch.stack(o) for o in zip(*per))
        else:
            vs = [v.movedim(d, 0).flatten(0, 1) if b else (v.expand(M, *v.shape).flatten(0, 1)
                  if torch.is_tensor(v) and v.dim() >= 3 else v) for v, d, b in zip(values, dims, batched)]
            out = tuple(None if o is None else o.unflatten(0, (M, -1)) for o in call(vs))
        out_dims = tuple(None if o is None else 0 for o in out)
        return (out[0], out_dims[0]) if one[0] else (out, out_dims)


def _folded(fn):
    def call(*args, **kw):
        return _Fold.apply(fn, len(args), tuple(kw), *args, *kw.values())
    return call


class StackedModel:
    """M zoo models of one config as one flat parameter buffer ``[M, N]`` (module doc); calling it
    maps tokens ``[M, B, T]`` to logits ``[M, B, T, vocab]``."""

    def __init__(self, models: list[HybridLM], scan_backend: str = "auto"):
        named = list(models[0].named_parameters())
        self.names = [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]
        self.shapes = {n: p.shape for n, p in named}
        self.n_decay = sum(self.shapes[n].numel() for n in self.names if len(self.shapes[n]) >= 2)
        with torch.no_grad():
            self.flat = torch.stack([torch.cat([dict(m.named_parameters())[n].reshape(-1) for n in self.names])
                                     for m in models])
        self.grad = torch.zeros_like(self.flat)
        self.params, off = {}, 0
        for n in self.names:
            k = self.shapes[n].numel()
            self.params[n] = self.flat[:, off:off + k].view(-1, *self.shapes[n]).requires_grad_()
            self.params[n].grad = self.grad[:, off:off + k].view(-1, *self.shapes[n])
            off += k
        self.base = copy.deepcopy(models[0]).set_scan_backend(scan_backend)
        for m in self.base.modules():
            for attr in ("attn_fn", "scan_fn"):
                if hasattr(m, attr):
                    setattr(m, attr, _folded(getattr(m, attr)))
        self._run = torch.vmap(lambda p, t: torch.func.functional_call(self.base, p, (t,)))

    def __call__(self, tokens: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every model (``idx`` None, tokens [M, B, T]) or of models ``idx`` (tokens [len(idx), B, T]);
        the gradients reach the flat buffer's rows of those models either way."""
        params = self.params if idx is None else {n: v.index_select(0, idx) for n, v in self.params.items()}
        return self._run(params, tokens)

    def zero_grad(self):
        self.grad.zero_()

    def backward(self, loss: torch.Tensor):
        """``loss.backward()``; the gradients accumulate into the flat buffer in place (the layout
        warning torch gives for such views does not apply)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient layout contract.*")
            loss.backward()

    @torch.no_grad()
    def copy_to(self, m: int, model: HybridLM) -> HybridLM:
        """Model m's weights into ``model`` (a HybridLM of the same config); returns it."""
        own = dict(model.named_parameters())
        for n in self.names:
            own[n].copy_(self.params[n][m])
        return model


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; to CUDA from pinned memory without waiting for the GPU's queued work."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


class StackedAdamW:
    """AdamW + gradient-norm clipping per model on a `StackedModel`'s flat buffers (module doc)."""

    def __init__(self, sm: StackedModel, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
        self.sm, self.wd, self.betas, self.eps = sm, weight_decay, betas, eps
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(sm.flat), torch.zeros_like(sm.flat)
        self.steps = 0

    @torch.no_grad()
    def clip(self, max_norm: float):
        """``clip_grad_norm_(model_m.parameters(), max_norm)`` for every model m."""
        norm = torch.linalg.vector_norm(self.sm.grad, dim=1, keepdim=True)
        self.sm.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))

    @torch.no_grad()
    def step(self, lrs: list[float]):
        """One AdamW step; ``lrs[m]``: model m's learning rate."""
        b1, b2 = self.betas
        self.steps += 1
        flat, g, dev = self.sm.flat, self.sm.grad, self.sm.flat.device
        bc1, bc2_sqrt = 1 - b1 ** self.steps, (1 - b2 ** self.steps) ** 0.5
        decay = _to_device(torch.tensor([[1 - lr * self.wd] for lr in lrs], dtype=flat.dtype), dev)
        size = _to_device(torch.tensor([[-(lr / bc1)] for lr in lrs], dtype=flat.dtype), dev)
        flat[:, :self.sm.n_decay].mul_(decay)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(self.eps)
        flat.add_(self.exp_avg.mul(size).div_(denom))

    def to_torch(self, m: int, model: HybridLM, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
        """Model m's state as the ``torch.optim.AdamW`` that `interp.train` builds for ``model`` (which
        holds model m's weights), ``lr`` set as after its last step."""
        opt = _make_optimizer(model, cfg)
        own, off = dict(model.named_parameters()), 0
        for n in self.sm.names:
            k, shape = self.sm.shapes[n].numel(), self.sm.shapes[n]
            opt.state[own[n]] = {"step": torch.tensor(float(self.steps)),
                                 "exp_avg": self.exp_avg[m, off:off + k].view(shape).clone(),
                                 "exp_avg_sq": self.exp_avg_sq[m, off:off + k].view(shape).clone()}
            off += k
        for group in opt.param_groups:
            group["lr"] = lr
        return opt

    @torch.no_grad()
    def load(self, m: int, state: dict, model: HybridLM, cfg: TrainConfig):
        """Model m's moments from a ``torch.optim.AdamW`` state dict saved by either trainer for ``model``."""
        opt = _make_optimizer(model, cfg)
        opt.load_state_dict(state)
        own, off = dict(model.named_parameters()), 0
        for n in self.sm.names:
            k, st = self.sm.shapes[n].numel(), opt.state[own[n]]
            self.exp_avg[m, off:off + k] = st["exp_avg"].reshape(-1)
            self.exp_avg_sq[m, off:off + k] = st["exp_avg_sq"].reshape(-1)
            self.steps = int(st["step"])
            off += k


class _MixtureData(torch.utils.data.Dataset):
    """Item i: every run's task-mixture batch of step ``start + i`` ((task, tokens, loss_mask) each),
    drawn as its single run draws it (a model still in the induction warm-up gets another)."""

    def __init__(self, cfgs: list[TrainConfig], start: int):
        self.cfgs, self.start = cfgs, start

    def __len__(self):
        return self.cfgs[0].steps - self.start

    def __getitem__(self, i):
        step, out = self.start + i, []
        for c in self.cfgs:
            task, b = _next_batch(c, step, np.random.default_rng([c.seed, step]), False, "cpu")
            out.append((task, b.tokens, b.loss_mask))
        return out


def _warmup_batch(cfg: TrainConfig, step: int):
    """(task, tokens, loss_mask) of a run's induction warm-up step, as its single run draws it."""
    task, b = _next_batch(cfg, step, None, True, "cpu")
    return task, b.tokens, b.loss_mask


def stack_batches(batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [M, B, T], targets [M, B, T-1], supervised [M, B, T-1]) of M (tokens, loss_mask)
    pairs, shorter sequences padded with <pad> at the end (unsupervised)."""
    B, T_ = batches[0][0].shape[0], max(t.shape[1] for t, _ in batches)
    tokens = torch.full((len(batches), B, T_), T.VOCAB.id("<pad>"), dtype=torch.long)
    mask = torch.zeros(len(batches), B, T_ - 1, dtype=torch.bool)
    for m, (t, lm) in enumerate(batches):
        tokens[m, :, :t.shape[1]] = t
        mask[m, :, :t.shape[1] - 1] = lm[:, :-1]
    return tokens, tokens[:, :, 1:], mask


def split_groups(lengths: list[int], min_saving: float = 0.15) -> list[list[int]]:
    """The runs of one step in one group (all, in order) or two: the shorter batches apart from the longer
    ones, at the split that pads fewest tokens, when that pads ``min_saving`` of the one group's tokens less
    (each group is padded to its own longest, `stack_batches`; its pass costs launches of its own)."""
    M, order = len(lengths), sorted(range(len(lengths)), key=lambda m: (lengths[m], m))
    top = lengths[order[-1]]
    cost, k = min((k * lengths[order[k - 1]] + (M - k) * top, k) for k in range(1, M + 1))
    if k == M or cost > (1 - min_saving) * M * top:
        return [list(range(M))]
    return [sorted(order[:k]), sorted(order[k:])]


def stacked_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[M]: each model's mean next-token cross-entropy on its supervised positions (`interp.train.lm_loss`)."""
    ce = F.cross_entropy(logits[:, :, :-1].flatten(0, 2), targets.flatten(), reduction="none").view(mask.shape)
    return torch.where(mask, ce, 0).flatten(1).sum(1) / mask.flatten(1).sum(1)


def _build(cfgs, mcfg: ZooConfig, outs: list[Path], device, resume: bool):
    """(StackedModel, StackedAdamW, start step, induction_done_at per run, torch RNG state per run):
    fresh models seeded as single runs are, or every run's checkpoint (all at one step)."""
    cks = [_checkpoint_dir(o) if resume else None for o in outs]
    if all(ck is None for ck in cks):
        models, rngs = [], []
        for c in cfgs:
            torch.manual_seed(c.seed)
            models.append(HybridLM(mcfg).to(device))
            rngs.append(torch.get_rng_state())
        sm = StackedModel(models, cfgs[0].scan_backend)
        for o in outs:
            cut_log(o, 0)   # rows of a call killed before its first checkpoint
        return sm, StackedAdamW(sm, cfgs[0].weight_decay), 0, [None] * len(cfgs), rngs
    states = [load_trainer_state(ck) if ck is not None else None for ck in cks]
    steps = [s["step"] if s else None for s in states]
    common = common_checkpoints(outs) if len(set(steps)) > 1 else None   # (it reads every trainer.pt: only then)
    if common:   # a stack killed while swapping its checkpoints in: its latest common step
        cks, states = common, [load_trainer_state(ck) for ck in common]
        steps = [s["step"] for s in states]
    if len(set(steps)) > 1:
        new = "" if None not in steps else ("; a run was added to an unfinished stack: finish the stack with its "
                                            "own runs first, then add it")
        raise InterpError(f"stacked runs resume together, but their checkpoints are at steps {steps} "
                          f"({', '.join(map(str, outs))}){new}; valid: checkpoints at one step (or resume=False / "
                          "--no-resume, or resume each run alone with interp train)")
    models = [load_model(ck, device=device).train() for ck in cks]
    sm = StackedModel(models, cfgs[0].scan_backend)
    opt = StackedAdamW(sm, cfgs[0].weight_decay)
    for m, (c, s) in enumerate(zip(cfgs, states)):
        opt.load(m, s["optimizer"], models[m], c)
    for o in outs:
        cut_log(o, steps[0])   # rows a killed call logged after its checkpoint are logged again from here
    tqdm.write(f"resuming {len(cfgs)} stacked runs at step {steps[0]}")
    return sm, opt, steps[0], [s.get("induction_done_at") for s in states], [s["torch_rng"] for s in states]


class _Stack:
    """The state of one stacked training (`train_stacked`): the stack, its optimizer, and per run
    its warm-up, log and checkpoint bookkeeping."""

    def __init__(self, cfgs, outs, device, resume: bool, bar_on: bool, cuda_graphs: bool = True,
                 length_split: bool = False):
        self.cfgs, self.outs, self.device, c0 = cfgs, outs, device, cfgs[0]
        self.length_split, self.all_runs = length_split, torch.arange(len(cfgs), device=device)
        mcfg = ZooConfig.from_dict({**c0.model, "vocab_size": len(T.VOCAB)})
        self.sm, self.opt, self.start, self.done_at, self.rngs = _build(cfgs, mcfg, outs, device, resume)
        self.single = HybridLM(mcfg).to(device).set_scan_backend(c0.scan_backend)
        # autocast's cast-weight cache off, which a CUDA-graph capture of the pass needs (same numbers)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if device.type == "cuda"
                         else torch.autocast("cpu", enabled=False))
        self.graphed = ShapeGraphs(self.grads) if cuda_graphs and graphs.graphable(device) else None
        self.evals = [induction_batch(c.eval_n, [c.seed, 7, 7], c.induction_len).to(device)
                      if c.induction_steps else None for c in cfgs]
        if self.start > c0.induction_steps or not c0.induction_steps:   # (as `interp.train._train`)
            self.done_at = [c0.induction_steps if d is None else d for d in self.done_at]
        self.bar = tqdm(range(self.start, c0.steps), initial=self.start, total=c0.steps, disable=not bar_on,
                        desc=f"train {mcfg.layout} x{len(cfgs)}", dynamic_ncols=True)
        self.tokens_seen, self.t0 = [0] * len(cfgs), time.time()

    def one(self, m: int) -> HybridLM:
        return self.sm.copy_to(m, self.single)

    def check_warmup(self, step: int):
        """Each run still warming up: its held-out check at ``step`` (as `interp.train.train` makes it)."""
        for m, c in enumerate(self.cfgs):
            if self.done_at[m] is None and step > 0 and (step % INDUCTION_CHECK == 0 or step >= c.induction_steps):
                self.done_at[m] = _warmup_over(self.one(m), self.evals[m], c, step, self.autocast,
                                               self.outs[m] / "train_log.jsonl", self.bar)

    def grads(self, *parts: torch.Tensor) -> tuple[torch.Tensor]:
        """(losses [M],) of a batch given as groups of runs, each (tokens [m, B, T], supervised [m, B, T-1],
        run indices [m]); one group holds every run in order. Every run's clipped gradients in the stack's
        flat buffer. Reads nothing on the host, so it can be captured."""
        groups = [parts[i:i + 3] for i in range(0, len(parts), 3)]
        with self.autocast:
            if len(groups) == 1:
                tokens, mask, _ = groups[0]
                losses = stacked_loss(self.sm(tokens), tokens[:, :, 1:], mask)
            else:
                got = [stacked_loss(self.sm(t, idx), t[:, :, 1:], mk) for t, mk, idx in groups]
                losses = torch.cat(got)[torch.argsort(torch.cat([idx for _, _, idx in groups]))]
        self.sm.zero_grad()
        self.sm.backward(losses.sum())
        self.opt.clip(self.cfgs[0].grad_clip)
        return (losses.detach(),)

    def step(self, step: int, mixture) -> tuple[torch.Tensor, str]:
        """One optimizer step of every run on its batch of ``step``: (losses [M], run 0's task)."""
        got = [mixture[m] if self.done_at[m] is not None else _warmup_batch(c, step) for m, c in enumerate(self.cfgs)]
        groups = split_groups([t.shape[1] for _, t, _ in got]) if self.length_split else [list(range(len(got)))]
        parts = []
        for g in groups:
            tokens, _, mask = stack_batches([got[m][1:] for m in g])
            idx = self.all_runs if len(groups) == 1 else _to_device(torch.tensor(g), self.device)
            parts += [_to_device(tokens, self.device), _to_device(mask, self.device), idx]
        for m, (_, t, _) in enumerate(got):
            self.tokens_seen[m] += t.numel()
        (losses,) = (self.graphed or self.grads)(*parts)
        self.opt.step([lr_at(step, c) for c in self.cfgs])
        return losses, got[0][0]

    def log(self, step: int, losses: list[float]):
        """Every run's periodic row after ``step`` (held-out accuracy included) in its train_log.jsonl."""
        dt = max(time.time() - self.t0, 1e-9)
        for m, c in enumerate(self.cfgs):
            row = _held_out_row(self.one(m), c, {"step": step + 1, "loss": losses[m], "lr": lr_at(step, c),
                                                 "tokens_per_s": self.tokens_seen[m] / dt},
                                self.evals[m], self.autocast, self.device)
            _append_log(self.outs[m] / "train_log.jsonl", row)
            self.bar.write(f"[{self.outs[m].name}] " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                                              f"{k}={v}" for k, v in row.items()))

    def checkpoint(self, steps_done: int):
        """Every run's ``checkpoint/`` after ``steps_done`` steps, as `interp.train` writes it, in three rounds
        (write every new one, swap every one in, drop every previous one), so that a kill at any point leaves
        every run a checkpoint at one common step (`interp.train.common_checkpoints`)."""
        for m, c in enumerate(self.cfgs):
            model = self.one(m)
            opt = self.opt.to_torch(m, model, c, lr_at(steps_done - 1, c))
            write_checkpoint(self.outs[m], model, opt, steps_done, c, self.done_at[m], torch_rng=self.rngs[m])
        for o in self.outs:
            swap_checkpoint(o)
        for o in self.outs:
            drop_old_checkpoint(o)

    def finish(self, steps_done: int) -> list[HybridLM]:
        return [copy.deepcopy(_finish(self.one(m), c, self.outs[m], steps_done, self.done_at[m], self.device))
                for m, c in enumerate(self.cfgs)]


def check_configs(cfgs) -> "torch.device":
    """Check the runs ``cfgs`` can train as one stack (each config, the shared fields, the device), before anything
    is written; returns the device."""
    check_stack(cfgs)
    for c in cfgs:
        _check_config(c)
    return resolve_device(cfgs[0].device)


def train_stacked(cfgs, resume: bool = True, progress: bool = True, stop_after: int | None = None,
                  workers: int | None = None, cuda_graphs: bool = True,
                  length_split: bool = False) -> list[HybridLM]:
    """Train (or resume) the runs ``cfgs`` as one stack (module doc) and save each to its ``out`` as
    `interp.train.train` would; returns the trained models. ``stop_after``: stop once this step is
    reached and checkpointed. ``workers``: processes drawing the batches (default 2 on CUDA, 0 on CPU).
    ``cuda_graphs``: on a GPU, replay each step's pass from a CUDA graph per batch shape
    (`interp.stacked_graph`; ignored on a CPU; False: eagerly). ``length_split``: a step whose shorter
    batches would be padded far past their length runs them in a second, shorter pass (`split_groups`;
    experimental: the same numbers up to float rounding, fewer padded tokens, one more pass)."""
    cfgs = list(cfgs)
    device = check_configs(cfgs)
    outs = [_make_out(c) for c in cfgs]
    with contextlib.ExitStack() as held:   # one trainer, one config per run folder (interp.runfolder)
        done = [held.enter_context(open_run(o, c, resume)) for o, c in zip(outs, cfgs)]
        models = {i: already_trained(outs[i], device) for i, d in enumerate(done) if d}   # finished: left as is
        todo = [i for i, d in enumerate(done) if not d]
        if todo:
            trained = _train_stack([cfgs[i] for i in todo], [outs[i] for i in todo], device, resume, progress,
                                   stop_after, workers, cuda_graphs, length_split)
            models.update(zip(todo, trained))
        return [models[i] for i in range(len(cfgs))]


def _train_stack(cfgs, outs, device, resume, progress, stop_after, workers, cuda_graphs, length_split):
    """`train_stacked`'s loop, in run folders `interp.runfolder.open_run` holds."""
    s = _Stack(cfgs, outs, device, resume, progress, cuda_graphs, length_split)
    for c in cfgs:
        _warn_config(c)
    c0, steps_done = cfgs[0], s.start
    workers = (2 if device.type == "cuda" else 0) if workers is None else workers
    data = torch.utils.data.DataLoader(_MixtureData(cfgs, s.start), batch_size=None, num_workers=workers,
                                       prefetch_factor=8 if workers else None)
    for step, mixture in zip(s.bar, data):
        s.check_warmup(step)
        losses, task = s.step(step, mixture)
        if step % 10 == 0:
            s.bar.set_postfix(loss=f"{losses.mean().item():.3f}", task=task)
        out_of_time = c0.time_limit and time.time() - s.t0 > 60 * c0.time_limit
        last = step + 1 == c0.steps or bool(out_of_time)
        if (step + 1) % c0.eval_every == 0 or last:
            s.log(step, losses.tolist())
        if (((step + 1) % c0.save_every == 0 and not last) or (stop_after is not None and step + 1 == stop_after)
                or (out_of_time and step + 1 < c0.steps)):  # a later call resumes where the time ran out
            s.checkpoint(step + 1)
        if stop_after is not None and step + 1 == stop_after and not last:
            return [copy.deepcopy(s.one(m)).eval() for m in range(len(cfgs))]
        if last:
            steps_done = step + 1
            break
    return s.finish(steps_done)
