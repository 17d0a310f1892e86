"""Scale out (#7) on one host with 2 GPUs (nvidia-h200-x2): a model spread over both GPUs, and
data-parallel patching sweeps.

    python bench/bench_distributed.py               # both parts (about 6-8 minutes)
    python bench/bench_distributed.py --part shard  # (a) only
    python bench/bench_distributed.py --part dp     # (b) only
    python bench/bench_distributed.py --quick       # small sizes, a smoke test of every step

(a) **Sharded model.** A random-init HF `olmo_hybrid` checkpoint with the Olmo-Hybrid-7B shape
    (32 layers, d=3840, 3 GDN : 1 attention; bf16) is written to local disk and loaded with
    `interp.models.load_any(..., device_map="auto")` (accelerate), which puts part of the layers on
    each GPU. On it: `interp.capture.capture` of GDN states + residual streams (streamed to disk
    in shards), then one `interp.patching.sweep` (resid_pre and rec.state of a GDN layer on each
    GPU). Reports where the layers went, time, and peak memory per GPU; checks the results equal
    the same checkpoint on one GPU. The 7B model *fits* on one H200 (141 GB); `device_map="auto"`
    balances it over both GPUs anyway, so this shows the mechanics and the per-GPU memory, not a
    model that could not run otherwise (`--gpu-memory 0=8GiB,1=120GiB` skews or forces a split).
    The same through the CLI: `interp patch --model <ckpt> --device-map auto --dtype bfloat16 ...`.
(b) **Data-parallel sweep.** The layer x position resid_pre sweep of BENCHMARKS.md section 5
    (zoo transformer, 12 layers, d=768, mqar, 128 tokens) over 512 pairs, run by
    `torchrun --nproc-per-node {1,2}` workers calling `interp.distributed.sweep` (one model copy
    per GPU, NCCL group, rank 0 merges); seconds from a barrier before the sweep to the merged
    result on rank 0; the 2-GPU result must equal the 1-GPU result. Then the documented CLI
    commands (`torchrun ... -m interp.cli -- patch|capture ... --distributed`) run once each.

Prints a markdown block for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this host's GPUs are shared: NVLink multicast stays off in every process we start
for k, v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(k, v)

import torch  # noqa: E402

GiB = 2**30
DEV0 = "cuda:0" if torch.cuda.is_available() else "cpu"  # CPU: --quick smoke test of the steps only
DTYPE = "bfloat16" if torch.cuda.is_available() else "float32"


def sync():
    for d in range(torch.cuda.device_count()):
        torch.cuda.synchronize(d)


def peaks():
    return [torch.cuda.max_memory_allocated(d) / GiB for d in range(torch.cuda.device_count())] or [0.0]


def in_use():
    return [torch.cuda.memory_allocated(d) / GiB for d in range(torch.cuda.device_count())] or [0.0]


def reset_peaks():
    for d in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(d)


def torchrun(n, args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))}
    env.setdefault("OMP_NUM_THREADS", "1")  # what torchrun gives >1 workers; the same for 1 (fair, same kernels)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] + args
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-6000:], sep="\n")
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return r, time.perf_counter() - t0


# --- (a) sharded model ------------------------------------------------------------------------------
def _shard_checkpoint(a, work: Path):
    """(checkpoint dir, layers, width, seconds to write it): the random-init olmo_hybrid, written once."""
    from transformers import AutoConfig, AutoModelForCausalLM
    L, d = (4, 256) if a.quick else (a.layers, 3840)
    cfg = AutoConfig.for_model("olmo_hybrid", num_hidden_layers=L, hidden_size=d,
                               **({} if not a.quick else dict(num_attention_heads=4, num_key_value_heads=4,
                                                                intermediate_size=512, linear_num_key_heads=4,
                                                                linear_num_value_heads=4, linear_key_head_dim=32,
                                                                linear_value_head_dim=64, vocab_size=4096,
                                                                pad_token_id=0, eos_token_id=1)),
                               layer_types=[("full_attention" if i % 4 == 3 else "linear_attention") for i in range(L)],
                               initializer_range=0.02)
    ck = work / f"olmo_hybrid_random_{L}x{d}_{DTYPE}"
    t0 = time.perf_counter()
    if not (ck / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device(DEV0):
            m = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, DTYPE))
        m.save_pretrained(ck, max_shard_size="4GB")
        del m
        torch.cuda.empty_cache()
    return ck, L, d, time.perf_counter() - t0


def _shard_run(tag: str, ck: Path, a, work: Path, pairs, tokens) -> dict:
    """Load the checkpoint sharded or on one GPU, capture, sweep; the timings, placement and results."""
    import hooks
    from interp import patching, tasks
    from interp.capture import capture, load_capture
    from interp.models import device_summary, load_any, parse_max_memory
    T = pairs.clean.shape[1]
    reset_peaks()
    t0 = time.perf_counter()
    if tag == "sharded":
        model, _ = load_any(str(ck), dtype=DTYPE, device_map="auto", max_memory=parse_max_memory(a.gpu_memory))
    else:
        model, _ = load_any(str(ck), dtype=DTYPE, device=DEV0)
    sync()
    t_load = time.perf_counter() - t0
    hm = hooks.wrap(model)
    where = {}
    for L_ in hm.layers:
        where.setdefault(str(next(L_.block.parameters()).device), []).append(L_.index)
    gdn = [L_.index for L_ in hm.layers if L_.rec is not None]
    layers = sorted({gdn[1], gdn[-2]})  # one GDN layer early (first GPU) and one late (second GPU)
    names = [f"blocks.{i}.rec.state" for i in layers] + [f"blocks.{layers[-1]}.resid_post"]
    after_load = in_use()
    # warm-up outside the timings: fla autotunes its kernels on the first call in a process
    # (it would otherwise be charged to whichever configuration runs first)
    patching.sweep(hm, tasks.make_pairs("mqar", 2, seed=5, n_pairs=8), sites=["resid_pre", "rec.state"],
                   layers=layers, positions=[2], progress=False, keep_all=True)
    sync()
    reset_peaks()
    out = work / f"capture_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    capture(model, tokens, names, out, positions=list(range(4, T, max(1, T // 6))), batch_size=16,
            max_memory="1GB", progress=False)
    sync()
    t_cap = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    cap_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    pk_cap = peaks()
    reset_peaks()
    t0 = time.perf_counter()
    res = patching.sweep(hm, pairs, sites=["resid_pre", "rec.state"], layers=layers,
                         positions=list(range(2, T, max(1, T // 8))), batch_size=a.shard_batch, progress=False,
                         keep_all=True)
    sync()
    t_sweep = time.perf_counter() - t0
    pk_sweep = peaks()
    r = dict(load=t_load, where=where, after_load=after_load, capture=t_cap, shards=len(man["shards"]),
             cap_bytes=cap_bytes, pk_cap=pk_cap, sweep=t_sweep, cells=len(res), pk_sweep=pk_sweep, res=res,
             params_on=device_summary(model), cap=load_capture(out), layers=layers, names=names,
             n_params=sum(p.numel() for p in model.parameters()))
    print(f"[{tag}] load {t_load:.1f} s, layers {where}, capture {t_cap:.1f} s ({len(man['shards'])} shards, "
          f"{cap_bytes / GiB:.2f} GiB), sweep {t_sweep:.1f} s ({len(res)} cells), peaks capture "
          f"{[round(x, 1) for x in pk_cap]} GiB, sweep {[round(x, 1) for x in pk_sweep]} GiB", flush=True)
    del model, hm
    torch.cuda.empty_cache()
    return r


def _shard_cli(ck: Path, layer: int, work: Path):
    """(return code, seconds) of the documented CLI patch command on the sharded checkpoint."""
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "interp.cli", "patch", "--model", str(ck), "--device-map", "auto",
                          "--dtype", DTYPE, "--n", "16", "--site", "rec.state", "--layer", str(layer),
                          "--positions", "4:12", "--out", str(work / "cli_sharded")],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    if cli.returncode != 0:
        print(cli.stderr[-4000:])
    return cli.returncode, time.perf_counter() - t0


def part_shard(a, work: Path, lines: list):
    from interp import tasks
    ck, L, d, t_make = _shard_checkpoint(a, work)
    pairs = tasks.make_pairs("mqar", a.shard_pairs, seed=0, n_pairs=8)
    tokens = tasks.generate("mqar", a.shard_examples, seed=1, n_pairs=8).tokens
    T = pairs.clean.shape[1]
    results = {tag: _shard_run(tag, ck, a, work, pairs, tokens) for tag in ("sharded", "one_gpu")}
    s, o = results["sharded"], results["one_gpu"]
    layers, names, n_params = s["layers"], s["names"], s["n_params"]
    d_res = float((s["res"].logit_diff - o["res"].logit_diff).abs().max())
    # the normalised metric divides by (clean - corrupted) logit diff, which is near 0 for a random-init
    # model, so also compare the raw patched logit diff against that gap and against its own scale
    d_raw = float((s["res"].raw_logit_diff - o["res"].raw_logit_diff).abs().max())
    raw_scale = float(o["res"].raw_logit_diff.abs().max())
    b = o["res"].attrs["baselines"]
    gap = float(b["clean_logit_diff"] - b["corrupted_logit_diff"])
    d_cap = max(float((s["cap"][k].float() - o["cap"][k].float()).abs().max()
                      / o["cap"][k].float().abs().max().clamp(min=1e-6)) for k in o["cap"])
    split = ", ".join(f"{dev}: layers {v[0]}-{v[-1]} ({len(v)})" for dev, v in s["where"].items())
    cli_rc, t_cli = _shard_cli(ck, layers[-1], work)
    lines += [
        f"**(a) One model over two GPUs.** Random-init HF `olmo_hybrid` with the Olmo-Hybrid-7B shape "
        f"({L} layers, d={d}, 3 GDN : 1 attention), {n_params / 1e9:.2f}B parameters, {DTYPE} "
        f"({n_params * 2 / GiB:.1f} GiB), written once to local disk ({t_make:.0f} s) and loaded with "
        f"`load_any(ckpt, dtype='{DTYPE}', device_map='auto'"
        + (f", max_memory='{a.gpu_memory}'" if a.gpu_memory else "") + ")`. "
        f"It fits on one H200 (so it can be compared with one GPU): `device_map='auto'` balances it over "
        f"both GPUs anyway.",
        "",
        f"Placement: {split}. Capture: {a.shard_examples} mqar prompts x {T} tokens, "
        f"{', '.join(f'`{n}`' for n in names)} at {len(json.loads((work / 'capture_sharded' / 'manifest.json').read_text())['positions'])} positions, "
        f"streamed in {s['shards']} shards of <= 1 GB ({s['cap_bytes'] / GiB:.2f} GiB). Sweep: resid_pre + rec.state "
        f"of GDN layers {layers} x {len(set(s['res'].position))} positions, {a.shard_pairs} pairs ({s['cells']} cells).",
        "",
        "| | load (s) | capture (s) | sweep (s) | weights per GPU (GiB) | peak in capture (GiB) | peak in sweep (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag, r in results.items():
        fmt = lambda xs: " / ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        lines.append(f"| {'device_map=auto (2 GPUs)' if tag == 'sharded' else 'one GPU (cuda:0)'} | {r['load']:.1f} | "
                     f"{r['capture']:.1f} | {r['sweep']:.1f} | {fmt(r['after_load'])} | {fmt(r['pk_cap'])} | {fmt(r['pk_sweep'])} |")
    lines += ["", f"Sharded vs one GPU: raw patched logit diff max |diff| {d_raw:.1e} (its scale {raw_scale:.2e}; "
              f"clean - corrupted gap {gap:.2e}); normalised logit diff max |diff| {d_res:.1e}; captures max "
              f"relative diff {d_cap:.1e}. CLI (`python -m interp.cli patch --model <ckpt> --device-map auto --dtype "
              f"{DTYPE} --n 16 --site rec.state --layer {layers[-1]} --positions 4:12`): "
              + (f"ran in {t_cli:.0f} s including loading." if cli_rc == 0 else f"FAILED (rc {cli_rc})."), ""]
    return d_res


# --- (b) data-parallel sweeps -----------------------------------------------------------------------
def dp_worker(a):
    """Run under torchrun: one model copy per rank, a timed distributed sweep, rank 0 writes JSON."""
    from interp import distributed, tasks
    from interp.zoo import load_model
    ctx = distributed.init()
    dev = ctx.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    m = load_model(a.model, device=dev)
    pairs = tasks.make_pairs("mqar", a.pairs, seed=0, n_pairs=8, seq_len=a.seq_len)
    from interp import patching
    patching.sweep(m, tasks.make_pairs("mqar", 4, seed=1, n_pairs=8, seq_len=a.seq_len), sites=["resid_pre"],
                   layers=[0, m.config.n_layers - 1], positions=[3, a.seq_len - 3], progress=False, keep_all=True)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ctx.barrier()
    t0 = time.perf_counter()
    res = distributed.sweep(m, pairs, out=a.out, ctx=ctx, sites=["resid_pre"], batch_size=a.batch_size,
                            model_name="dp", keep_all=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter() - t0
    ts = ctx.gather(t)
    if ctx.is_main:
        res.to_csv(Path(a.out) / "result.csv", index=False)
        Path(a.json).write_text(json.dumps(dict(world=ctx.world_size, seconds=t, per_rank=ts, cells=len(res),
                                                pairs=a.pairs, device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU")))
    distributed.shutdown()


def part_dp(a, work: Path, lines: list):
    import pandas as pd
    from interp.tasks import VOCAB
    from interp.zoo import HybridLM, ZooConfig, save_model
    from interp import patching
    d, L, H = (64, 3, 4) if a.quick else (768, 12, 12)
    torch.manual_seed(0)
    m = HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=d, n_layers=L, layout="transformer", n_heads=H, head_dim=d // H))
    with torch.no_grad():  # as bench_patch.py: prompt-dependent answers
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    mdir = work / "dp_model"
    save_model(m, mdir)
    runs = {}
    W2 = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2  # CPU: 2 gloo processes (smoke test)
    for W in sorted({1, W2}):
        out = work / f"dp_sweep_{W}"
        shutil.rmtree(out, ignore_errors=True)
        js = work / f"dp_{W}.json"
        _, wall = torchrun(W, [str(Path(__file__).resolve()), "--worker", "--model", str(mdir), "--out", str(out),
                               "--json", str(js), "--pairs", str(a.pairs), "--seq-len", str(a.seq_len),
                               "--batch-size", str(a.batch_size)])
        runs[W] = json.loads(js.read_text())
        runs[W]["wall"] = wall
        runs[W]["res"] = patching.read_csv_exact(out / "result.csv")
        print(f"[dp {W}] {runs[W]['seconds']:.1f} s (per rank {[round(x, 1) for x in runs[W]['per_rank']]}), "
              f"torchrun wall {wall:.0f} s", flush=True)
    same = runs[W2]["res"].equals(runs[1]["res"])
    diff = float((runs[W2]["res"].logit_diff - runs[1]["res"].logit_diff).abs().max())
    rows = runs[1]["cells"] * a.pairs
    lines += [f"**(b) Data-parallel patching sweep.** Layer x position resid_pre sweep (BENCHMARKS.md section 5 "
              f"workload): zoo transformer, {L} layers, d={d}, mqar, {a.pairs} pairs x {a.seq_len} tokens, "
              f"{runs[1]['cells']} cells = {rows} patched rows, batch {a.batch_size} rows, float32 (TF32 off). "
              f"`torchrun --standalone --nproc-per-node N bench/bench_distributed.py --worker ...` (workers call "
              f"`interp.distributed.sweep`: one model copy per GPU, NCCL group + gloo control group, rank 0 merges); "
              f"seconds from a barrier before the sweep to rank 0's merged PatchResult.", "",
              "| GPUs | sweep (s) | per rank (s) | patched rows / s | speed-up | torchrun wall (s) |",
              "|---|---|---|---|---|---|"]
    for W, r in sorted(runs.items()):
        lines.append(f"| {W} | {r['seconds']:.1f} | {' / '.join(f'{x:.1f}' for x in r['per_rank'])} | "
                     f"{rows / r['seconds']:.0f} | {runs[1]['seconds'] / r['seconds']:.2f}x | {r['wall']:.0f} |")
    lines += ["", f"{W2}-GPU result equals the 1-GPU result: {'exactly' if same else f'max |diff| {diff:.1e}'}.", ""]

    # the documented CLI commands, once each
    cli = []
    knob = ["--knob", f"seq_len={a.seq_len}"]
    for sub, extra in (("patch", knob + ["--n", "64", "--positions", "0:40", "--batch-size", "256"]),
                       ("capture", knob + ["--task", "mqar", "--n", "256", "--names",
                                           f"blocks.{L - 1}.resid_post,blocks.0.attn.pattern", "--positions", "5,20,40"])):
        out = work / f"cli_{sub}"
        shutil.rmtree(out, ignore_errors=True)
        tail = ["--device", "cuda" if torch.cuda.is_available() else "cpu", "--distributed"] + extra
        r, wall = torchrun(W2, ["-m", "interp.cli", "--", sub, "--model", str(mdir), "--out", str(out)] + tail)
        cli.append(f"`torchrun --nproc-per-node {W2} -m interp.cli -- {sub} --model <dp_model> --out <dir> "
                   f"{' '.join(tail)}` ({wall:.0f} s wall) printed `{r.stdout.strip().splitlines()[-1]}`")
    lines += ["CLI: " + "; ".join(cli), ""]
    return runs[1]["seconds"] / runs[W2]["seconds"], same


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["all", "shard", "dp"])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--work", default="/tmp/bench_distributed")
    ap.add_argument("--layers", type=int, default=32, help="(a) olmo_hybrid layers (32 = the 7B shape)")
    ap.add_argument("--gpu-memory", default=None, help="(a) max memory per GPU for device_map, e.g. 0=8GiB,1=120GiB")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                    help="(a) model dtype (default bfloat16 on CUDA, float32 on CPU); float32 separates "
                         "bf16 rounding from a sharding error")
    ap.add_argument("--shard-pairs", type=int, default=64)
    ap.add_argument("--shard-examples", type=int, default=128)
    ap.add_argument("--shard-batch", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=512, help="(b) pairs")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return dp_worker(a)
    global DTYPE
    DTYPE = a.dtype or DTYPE
    if a.quick:
        a.pairs, a.seq_len, a.batch_size = 32, 48, 64
        a.shard_pairs, a.shard_examples, a.shard_batch = 8, 16, 64
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ngpu = torch.cuda.device_count()
    dev = f"{ngpu} x {torch.cuda.get_device_name(0)}" if ngpu else "CPU"
    if ngpu < 2:
        print(f"note: {ngpu} GPU(s) here; this benchmark is meant for 2 (nvidia-h200-x2)")
    try:
        import accelerate
        acc = accelerate.__version__
    except ImportError:
        acc = None
    lines = []
    if a.part in ("all", "shard"):
        if (not ngpu and not a.quick) or acc is None:
            lines.append(f"(a) not run: needs CUDA and accelerate (GPUs {ngpu}, accelerate {acc}).")
        else:
            part_shard(a, work, lines)
    if a.part in ("all", "dp"):
        part_dp(a, work, lines)
    cmd = "python bench/bench_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from interp.experiment import git_commit
    commit = git_commit()
    print(f"\n### Scale out: sharded model and data-parallel sweeps (issue #7) ({datetime.date.today()}, {dev})\n")
    print(f"Command: `{cmd.strip()}` (commit {commit or 'n/a'}); torch {torch.__version__}, accelerate {acc}.\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
