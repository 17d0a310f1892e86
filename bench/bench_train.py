"""Training throughput (tokens/s) of 12-layer d=768 zoo models, fla kernel path vs pure-torch
reference path, in one run.

    python bench/bench_train.py [--batch 8 --seq 1024 --steps 20]
    python bench/bench_train.py --profile        # + where gdn75's fla training step spends its GPU time
    python bench/bench_train.py --modes train,graphs --repeat 2   # eager steps, then each model's forward and
                                                 # backward replayed from one CUDA graph (`graphed`), twice in turn
    python bench/bench_train.py --modes trainer-eager,trainer   # interp.train's own step (GradPass, its AdamW),
                                                 # eager, then replayed from CUDA graphs
    HYBRID_INTERP_DQKWG_COMPILE=1 python bench/bench_train.py   # the torch dqkwg stand-in through torch.compile
    python bench/bench_train.py --modes train --dqkwg torch,auto   # gdn75 with the stand-in, then fla's kernel
                                                                   # at 32-wide blocks (hooks.scan.fla_dqkwg_triton)
    python bench/bench_train.py --modes train --conv torch,fla     # gdn75's short convs by F.conv1d, then by fla's
                                                                   # causal_conv1d (HYBRID_INTERP_CONV)
    python bench/bench_train.py --modes train --compile off,mixers # gdn75 eager, then its mixers' non-scan parts
                                                                   # through torch.compile (compile_mixers)
    python bench/bench_train.py --modes train --norm torch,fla --fuse on,off --repeat 2   # gdn75's gated norm on
                          # fla's kernel or the composite (HYBRID_INTERP_NORM); its input projections in one matmul
                          # and conv or one each (interp.zoo.common.FUSE_PROJECTIONS); every row twice, in turn

Prints device, date, command and a table; bf16 autocast, AdamW, full fwd+bwd+step.
"""
import argparse
import contextlib
import os
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from interp.zoo import HybridLM, ZooConfig


def compile_mixers(m):
    """Wrap each recurrent mixer's non-scan parts (``scan_inputs``: projections, short convs, gates; ``output``:
    gate, norm, out projection) in torch.compile, leaving fla's scan eager between them."""
    for name in ("recompile_limit", "cache_size_limit"):   # one compile per mixer instance may be needed
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    for b in m.blocks:
        if hasattr(b.mixer, "scan_inputs") and hasattr(b.mixer, "output"):
            b.mixer.scan_inputs = torch.compile(b.mixer.scan_inputs)
            b.mixer.output = torch.compile(b.mixer.output)
    return m


def loss_of(m, x, cache=True):
    """The next-token loss of ``m`` on tokens ``x`` [B, T+1] under bf16 autocast (``cache=False``: autocast's
    cast-weight cache off, as a CUDA-graph capture needs)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache):
        logits = m(x[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


def graphed(m, opt, x):
    """A training step of ``m`` whose forward and backward replay from one CUDA graph (PyTorch's whole-network
    capture, by `interp.interventions.graphs.capture`: warm-up on a side stream; each pass sets the gradients to
    None first, so that the captured pass allocates them and every replay overwrites them); AdamW runs eagerly
    after the replay. Returns (step(batch), check()): check compares the replay's gradients with an eager
    backward's on the same batch and parameters, and a second eager backward's with the first (the control: what
    the kernels' own nondeterminism gives), each as `rel_diff`."""
    from interp.interventions import graphs
    static = x.clone()

    def body():
        opt.zero_grad(set_to_none=True)
        loss = loss_of(m, static, cache=False)
        loss.backward()
        return loss.detach()

    graph, _ = graphs.capture(body)   # GraphUnavailable (a RuntimeError) if it cannot be captured

    def step(batch):
        static.copy_(batch)
        graph.replay()
        opt.step()

    def check():
        graph.replay()
        replayed = [p.grad.detach().clone() for p in m.parameters()]
        eager = [torch.autograd.grad(loss_of(m, static), list(m.parameters())) for _ in range(2)]
        return rel_diff(replayed, eager[0]), rel_diff(eager[1], eager[0])
    return step, check


def rel_diff(xs, refs) -> float:
    """The largest |x - ref| / max |ref| over the pairs of tensors (a gradient per parameter)."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
               for a, b in zip(xs, refs))


def trainer_step(m, x, graphed_):
    """The trainer's own step (`interp.train._optimizer_step`: `interp.train_graph.GradPass` forward + backward +
    clipping, replayed from CUDA graphs when ``graphed_``, then the trainer's unfused AdamW with its two
    weight-decay groups and its learning-rate schedule) on tokens ``x`` [B, T] with every position supervised.
    Returns (step(batch), check()) as `graphed`; check: the replay's gradients against an eager pass of the same
    `GradPass` on the same batch, and a second eager pass's against the first (None when not graphed)."""
    from types import SimpleNamespace

    from interp.train import TrainConfig, _make_optimizer, _optimizer_step, masked_lm_loss
    from interp.train_graph import GradPass
    cfg = TrainConfig(out="", model={}, lr=1e-4)
    opt = _make_optimizer(m, cfg)
    gp = GradPass(m, cfg.grad_clip, masked_lm_loss, graphed_)
    batch = SimpleNamespace(tokens=x.clone(), loss_mask=torch.ones(x.shape, dtype=torch.bool, device=x.device))
    count = [0]

    def step(tokens):
        batch.tokens.copy_(tokens)
        _optimizer_step(opt, batch, cfg, count[0], gp)
        count[0] += 1

    def check():
        gp(batch)
        replayed = [p.grad.detach().clone() for p in gp.params]
        eager = []
        for _ in range(2):
            gp.grads(batch.tokens, batch.loss_mask)
            eager.append([p.grad.detach().clone() for p in gp.params])
        return rel_diff(replayed, eager[0]), rel_diff(eager[1], eager[0])
    return step, (check if graphed_ else None)


def bench(layout, backend, batch, seq, steps, warmup=3, train=True, around=None, compile_=False, graphs=False,
          trainer=None):
    """Time ``steps`` steps after ``warmup``; ``around``: a context manager (e.g. a profiler) entered for the
    timed steps only (not the model's construction and move to the GPU, nor the warm-up); ``compile_``:
    `compile_mixers` first; ``graphs``: training steps replayed from a CUDA graph (`graphed`, captured after the
    warm-up; the row's ``graph_grad_diff``: the replay's gradients against an eager backward's, and two eager
    backwards' against each other); ``trainer``:
    "trainer" or "trainer-eager", the trainer's own step (`trainer_step`, graphed or not; its capture happens in
    the first warm-up step) on the batch's first ``seq`` tokens."""
    torch.manual_seed(0)
    cfg = ZooConfig(vocab_size=32000, d_model=768, n_layers=12, layout=layout, n_heads=12, head_dim=64,
                    mamba_head_dim=64, mamba_state=64)
    m = HybridLM(cfg).cuda().set_scan_backend(backend).train()
    if compile_:
        compile_mixers(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 32000, (batch, seq + 1), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    ctx = around if around is not None else contextlib.nullcontext()
    step = check = loss = None
    if trainer:
        x = x[:, :seq].contiguous()
        step, check = trainer_step(m, x, trainer == "trainer")
    for i in range(warmup + steps):
        if i == warmup:
            if graphs:   # no autograd graph of the warm-up left alive (its AccumulateGrad nodes' stream)
                loss = None
                step, check = graphed(m, opt, x)
            torch.cuda.synchronize()
            ctx.__enter__()
            t0 = time.perf_counter()
        if step is not None:
            step(x)
            continue
        if not train:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                m(x[:, :-1])
            continue
        loss = loss_of(m, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    ctx.__exit__(None, None, None)
    return dict(layout=layout, backend=backend,
                mode=trainer or ("graphs" if graphs else "train" if train else "forward"),
                params=m.num_params(), ms_per_step=dt * 1e3, tokens_per_s=batch * seq / dt,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30, graph_grad_diff=check() if check else None)


KNOBS = {  # gdn75's fla-path settings, each a comma list on the command line (the first value: the default)
    "dqkwg": (("auto", "torch"), "HYBRID_INTERP_DQKWG_IMPL: auto (fla's kernel at 32-wide blocks where its first-use "
              "check passes), torch (the stand-in)"),
    "conv": (("torch", "fla"), "HYBRID_INTERP_CONV: torch (F.conv1d), fla (fla's causal_conv1d)"),
    "norm": (("torch", "fla"), "HYBRID_INTERP_NORM: torch (the composite), fla (fla's rms_norm_gated)"),
    "fuse": (("on", "off"), "the input projections in one matmul and one conv (interp.zoo.common.proj_conv) or one "
             "call each"),
    "compile": (("off", "mixers"), "each mixer's non-scan parts eager or through torch.compile (compile_mixers)"),
}


MODES = ("train", "forward", "graphs", "trainer", "trainer-eager")


def set_knobs(k):
    """Set gdn75's fla path per the knobs ``k`` (one value each, `KNOBS`; None: the defaults, for the transformer
    and the reference rows)."""
    from interp.zoo import common
    k = k or {n: valid[0] for n, (valid, _) in KNOBS.items()}
    os.environ["HYBRID_INTERP_DQKWG_IMPL"] = k["dqkwg"]
    os.environ["HYBRID_INTERP_CONV"] = k["conv"]
    os.environ["HYBRID_INTERP_NORM"] = k["norm"]
    common.FUSE_PROJECTIONS = k["fuse"] == "on"


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1, help="measure the rows this many times over, in turn (a "
                    "host's drift shows as the spread between rounds)")
    ap.add_argument("--modes", default="train,forward", help="comma list of train, forward, graphs (training "
                    "steps replayed from one CUDA graph per model, the transformer's too; no torch-ref row), trainer "
                    "(interp.train's own step: GradPass replayed from CUDA graphs, its unfused AdamW, clipping; "
                    "no torch-ref row), trainer-eager (the same step without graphs)")
    for name, (valid, what) in KNOBS.items():
        ap.add_argument(f"--{name}", default=valid[0], help=f"comma list for gdn75's fla rows; {what}")
    ap.add_argument("--profile", action="store_true", help="also profile 3 training steps of the transformer and "
                    "of gdn75 on fla: GPU time vs wall time, the top GPU ops, the share of hooks.scan.fla_dqkwg")
    a = ap.parse_args()
    for v in a.modes.split(","):
        if v not in MODES:
            ap.error(f"--modes {v!r} is not one of: {', '.join(MODES)}")
    for name, (valid, _) in KNOBS.items():
        for v in getattr(a, name).split(","):
            if v not in valid:
                ap.error(f"--{name} {v!r} is not one of: {', '.join(valid)}")
    return a


def main():
    a = parse_args()
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"torch {torch.__version__}\ncommand: python {' '.join(sys.argv)}")
    from hooks.scan import fla_dqkwg, use_kernels
    if use_kernels(torch.empty(1, device="cuda")):   # fla's gated backward on Hopper + Triton < 3.7.1: fla #640
        print(f"fla gated backward: chunk_bwd_dqkwg from hooks.scan.fla_dqkwg (fla's kernel at 32-wide blocks or "
              f"the torch stand-in, per --dqkwg): {fla_dqkwg.install()}")
    print(f"HYBRID_INTERP_DQKWG_COMPILE={os.environ.get('HYBRID_INTERP_DQKWG_COMPILE', '0')}")
    combos = [dict()]
    for name in KNOBS:
        combos = [dict(c, **{name: v}) for c in combos for v in getattr(a, name).split(",")]
    rows = []
    for rnd in range(a.repeat):
        for mode in a.modes.split(","):
            # the transformer has no scan, so its two paths are the same model: measured once
            runs = ([("transformer", "auto", None)] + [("gdn75", "auto", k) for k in combos]
                    + [("gdn75", "reference", None)] * (mode in ("train", "forward")))
            for l, b, k in runs:
                set_knobs(k)
                try:
                    r = bench(l, b, a.batch, a.seq, a.steps, train=mode != "forward", graphs=mode == "graphs",
                              compile_=bool(k and k["compile"] == "mixers"),
                              trainer=mode if mode.startswith("trainer") else None)
                    rows.append(dict(r, round=rnd, knobs=" ".join(f"{n}={v}" for n, v in k.items()) if k else "-"))
                    print(f"done: round {rnd} {l} {b} {mode}: {r['ms_per_step']:.1f} ms/step, graph/eager grad "
                          f"(eager/eager) {r['graph_grad_diff']}", flush=True)
                except RuntimeError as e:  # e.g. fla refusing its backward on this Triton/GPU
                    print(f"{l} {b} {mode}: FAILED: {str(e).splitlines()[0][:200]}")
                    torch.cuda.empty_cache()
    set_knobs(None)
    from hooks.scan import fla_dqkwg_triton
    print("fla's dqkwg kernel at 32-wide blocks, first-use checks (config: passed):", fla_dqkwg_triton.checked())
    report(rows)
    if a.profile:
        profile(a.batch, a.seq)


def report(rows):
    """The rows as a table, then each gdn75 fla row's tokens/s over the transformer's and the reference path's of
    the same round and mode (graph/eager grad: a graphed row's largest relative gradient difference between the
    replay and an eager backward on the same batch, then in brackets two eager backwards', `graphed`)."""
    print(f"{'round':5s} {'layout':12s} {'backend':10s} {'mode':8s} {'params':>8s} {'ms/step':>9s} {'tokens/s':>10s} "
          f"{'peak GiB':>9s} {'graph/eager (eager/eager) grad':>30s}  knobs")
    for r in rows:
        diff = "-" if r["graph_grad_diff"] is None else "{:.1e} ({:.1e})".format(*r["graph_grad_diff"])
        print(f"{r['round']:5d} {r['layout']:12s} {('fla' if r['backend'] == 'auto' else 'torch-ref'):10s} "
              f"{r['mode']:8s} {r['params'] / 1e6:7.1f}M {r['ms_per_step']:9.1f} {r['tokens_per_s']:10.0f} "
              f"{r['peak_gib']:9.2f} {diff:>30s}  "
              f"{r['knobs']}")
    base = {(r["round"], r["mode"], r["layout"], r["backend"]): r["tokens_per_s"] for r in rows if r["knobs"] == "-"}
    for r in rows:
        if r["knobs"] == "-":
            continue
        tr = base.get((r["round"], r["mode"], "transformer", "auto"))
        ref = base.get((r["round"], r["mode"], "gdn75", "reference"))
        print(f"round {r['round']} {r['mode']}: gdn75 fla ({r['knobs']}): "
              + (f"{r['tokens_per_s'] / tr:.2f}x the transformer" if tr else "")
              + (f", {r['tokens_per_s'] / ref:.2f}x torch-ref" if ref else ""))


def profile(batch, seq, steps=3):
    """Print, for ``steps`` training steps of the transformer and of gdn75 on fla, the GPU's busy time beside the
    steps' wall time (their gap: the GPU waiting on Python and launches), the top GPU ops, and the dqkwg share."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof
    for layout in ("transformer", "gdn75"):
        bench(layout, "auto", batch, seq, 2)                    # warm (autotuning, compile)
        p = prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        r = bench(layout, "auto", batch, seq, steps, warmup=2, around=p)   # only the training steps are profiled
        ev = p.key_averages()
        labels = ("hybrid_interp_dqkwg", "hybrid_interp_dqkwg32")         # the stand-in's and the kernel's
        # the kernels' own rows (the table's "Self CUDA time total"; the host-side ops that launched them carry
        # the same time again)
        total = sum(e.self_device_time_total for e in ev if e.device_type != DeviceType.CPU)
        stand = sum(e.device_time_total for e in ev if e.key in labels)
        print(f"profile of {steps} {layout} training steps: wall {r['ms_per_step'] * steps:.1f} ms (profiled), "
              f"GPU time {total / 1e3:.1f} ms, dqkwg (stand-in or 32-wide kernel) {stand / 1e3:.1f} ms "
              f"({stand / max(total, 1):.1%})")
        print(ev.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
