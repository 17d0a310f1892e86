"""E3 — which tokens does the hybrid predict better? (token-level loss decomposition)

Two causal LMs that share a tokenizer read the same held-out text; every token gets both losses
and its difference ``diff = loss(A) - loss(B)`` (> 0: B, the hybrid, predicts it better),
stratified by tag family (closed-class function words vs open-class content words, from the
lexicon shipped in `interp.tokenloss`; code keywords / identifiers from Python's tokenizer), copy
features (token inside a repeated n-gram, n-gram length, distance to the earlier occurrence) and
delimiters (opening vs closing brackets / quotes / HTML tags), separately for prose, code and
markup. Library: `interp.tokenloss`.

Models: ``--model-a`` / ``--model-b`` (local HF checkpoint directories with their tokenizer, e.g.
an Olmo-3 and an Olmo-Hybrid checkpoint you have). Without them the experiment builds its own
pair, so the comparison is real: a byte-level BPE tokenizer trained on the corpus's training split
(the `tokenizers` library, nothing downloaded), an Olmo-3-style transformer (``olmo3``, all
full attention) and an Olmo-Hybrid-style model (``olmo_hybrid``: 3 Gated DeltaNet layers per
attention layer), matched in parameter count, randomly initialised and trained on the same batches.

Corpus: ``--corpus PATH`` (files / directories, ``prose:``, ``code:``, ``markup:`` prefixes), else
`interp.tokenloss.default_corpus`: Python's stdlib source (code), HTML / Markdown / RST found on disk
(markup) and the plain-text Python reference manual plus plain-text docs (prose); the report lists
the files and sizes (``corpus.csv``).

Synthetic probes: per-token losses of zoo models (default: the shipped ``transformer``, ``gdn75``,
``gdn100``; the full profile also trains a matched transformer / gdn75 / gdn100 on the probe tasks)
on ``pronoun``, ``entity_tracking`` and ``brackets``, per knob value, at the answer and (brackets)
at every closing bracket.

    python experiments/e3_token_loss.py --quick     # CPU, a few minutes
    python experiments/e3_token_loss.py --device cuda   # GPU; 7-minute calls, call again to continue
    python experiments/e3_token_loss.py --model-a ckpt/olmo3 --model-b ckpt/olmo-hybrid --corpus code:src/

Writes ``<out>/`` (default figures/e3_token_loss; figures/e3_token_loss_quick for --quick): token_loss.png,
token_loss_excess.png, summary.csv, tokens.parquet, probes.png, probes.parquet, probes_summary.csv, corpus.csv,
training.png (own pair), report.md.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp import InterpError
from interp import experiment as X
from interp import tasks as T
from interp import tokenloss as TL
from interp.stats import boot_ci
from interp.store import atomic_save, atomic_write_json
from interp.zoo import load_trainer_state

NAME = "e3_token_loss"
PROFILES = {
    # GPU: an 8-layer d=256 pair (2 learning rates each) trained on up to ~9 MB of text, evaluated on ~0.9 MB
    "full": dict(train_bytes=3_000_000, eval_bytes=300_000, val_bytes=100_000, max_doc_bytes=32_000, vocab=4096,
                 model=dict(d=256, layers=8, heads=4, head_dim=64), seq_len=512, batch=32, steps=2000,
                 lrs=(1e-3, 3e-3), warmup=200, val_windows=256, eval_seq_len=512, eval_batch=16, time_budget=7.0,
                 threads=None, pair_workers=4, probe_models="train", probe_n=256, probe_train=dict(
                     model=dict(d_model=128, n_layers=8, n_heads=4, head_dim=32), steps=2000, batch_size=64,
                     lrs=(1e-3, 3e-3), warmup=150, workers=4, val_n=128, eval_reserve=1.0)),
    # CPU, a few minutes: a 4-layer d=64 pair (2 learning rates each), 250 steps on ~1.2 MB
    "quick": dict(train_bytes=400_000, eval_bytes=40_000, val_bytes=15_000, max_doc_bytes=12_000, vocab=1024,
                  model=dict(d=64, layers=4, heads=2, head_dim=32), seq_len=128, batch=16, steps=250,
                  lrs=(3e-3, 1e-2), warmup=25, val_windows=64, eval_seq_len=128, eval_batch=16, time_budget=0,
                  threads=1, probe_models="transformer,gdn75,gdn100", probe_n=64,
                  probe_train=dict(model=dict(d_model=32, n_layers=4, n_heads=2, head_dim=16), steps=300,
                                   batch_size=32, lrs=(1e-3, 3e-3), warmup=30, workers=1, val_n=32, eval_reserve=0)),
    # the test suite: seconds
    "test": dict(train_bytes=20_000, eval_bytes=5_000, val_bytes=2_000, max_doc_bytes=3_000, vocab=300,
                 model=dict(d=16, layers=2, heads=2, head_dim=8), seq_len=32, batch=4, steps=3, lrs=(3e-3,),
                 warmup=1, val_windows=8, eval_seq_len=32, eval_batch=8, time_budget=0, threads=1,
                 probe_models="transformer,gdn75", probe_n=8,
                 probe_train=dict(model=dict(d_model=16, n_layers=4, n_heads=2, head_dim=8), steps=2, batch_size=4,
                                  lrs=(3e-3,), warmup=1, workers=1, val_n=4, eval_reserve=0),
                 probe_grid={"pronoun": {"n_distractors": [2]}, "entity_tracking": {"n_moves": [2]},
                             "brackets": {"depth": [2]}}),
}
F3 = "{:.3f}"                       # the report's tables: floats to 3 decimals
EXPECTED = {"pronoun": +1, "entity_tracking": +1, "brackets": -1}   # sign of loss(transformer) - loss(hybrid)
SPECIALS = ["<pad>", "<bos>", "<eos>"]


# --- the model pair ------------------------------------------------------------------------------

def train_tokenizer(docs, vocab: int, path: Path):
    """A byte-level BPE tokenizer trained on ``docs`` (saved as a PreTrainedTokenizerFast in the
    folder ``path``, which appears whole: written as ``<path>.tmp-<pid>`` and renamed)."""
    from transformers import PreTrainedTokenizerFast
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d.text for d in docs), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)        # a folder without tokenizer.json: left by an older version
    os.replace(tmp, path)
    return fast


def pair_configs(vocab_size: int, M: dict, max_len: int) -> dict:
    """Olmo-3-style transformer and Olmo-Hybrid-style GDN hybrid (attention every 4th layer, last
    layer attention), the transformer's MLP width chosen to match the hybrid's parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM
    L = M["layers"]
    common = dict(vocab_size=vocab_size, hidden_size=M["d"], num_hidden_layers=L, num_attention_heads=M["heads"],
                  num_key_value_heads=M["heads"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=True, max_position_embeddings=max(max_len, 64))
    kinds = ["full_attention" if (L - 1 - i) % 4 == 0 else "linear_attention" for i in range(L)]
    hyb = AutoConfig.for_model("olmo_hybrid", **common, intermediate_size=3 * M["d"], layer_types=kinds,
                               linear_num_key_heads=M["heads"], linear_num_value_heads=M["heads"],
                               linear_key_head_dim=M["head_dim"], linear_value_head_dim=M["head_dim"])

    def n_params(cfg):
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    target = n_params(hyb)

    def tf(inter):
        return AutoConfig.for_model("olmo3", **common, intermediate_size=inter, layer_types=["full_attention"] * L)
    n1, n2 = n_params(tf(1)), n_params(tf(2))
    inter = max(1, round(1 + (target - n1) / (n2 - n1)))
    return {"olmo3": tf(inter), "olmo_hybrid": hyb}


@contextmanager
def reference_kernels(model):
    """While open, HF linear-attention layers use transformers' pure-torch functions instead of
    fla / causal-conv1d kernels (fla 0.6's gated-chunk backward refuses Hopper with Triton < 3.7.1,
    fla issue #640). The parameters are the same on both paths."""
    names = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
             "causal_conv1d_update", "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule")
    saved = []
    for m in model.modules():
        try:
            g = inspect.unwrap(type(m).forward).__globals__     # the globals its forward calls through
        except (TypeError, AttributeError):
            continue
        for n in names:
            f = g.get(n)
            if callable(f) and inspect.unwrap(f) is not f and not any(s[0] is g and s[1] == n for s in saved):
                saved.append((g, n, f))
                g[n] = inspect.unwrap(f)
    try:
        yield
    finally:
        for g, n, f in saved:
            g[n] = f


def token_stream(docs, tok) -> np.ndarray:
    ids = []
    for d in docs:
        ids += [tok.bos_token_id] + tok(d.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return np.asarray(ids, np.int64)


@torch.no_grad()
def stream_loss(model, stream: np.ndarray, seq_len: int, n_windows: int, batch: int, device) -> float:
    """Mean next-token loss (nats) over the first ``n_windows`` non-overlapping windows of ``stream``."""
    from interp.tokenloss import token_nll
    starts = list(range(0, max(len(stream) - seq_len, 0) + 1, seq_len))[:n_windows]
    if not starts or len(stream) < 2:
        raise InterpError(f"the validation text has {len(stream)} tokens; too little for one window")
    tot = n = 0.0
    for i in range(0, len(starts), batch):
        x = torch.from_numpy(np.stack([stream[s:s + seq_len] for s in starts[i:i + batch]])).to(device)
        nll = token_nll(model, x)
        tot += float(nll.sum())
        n += nll.numel()
    return tot / n


def run_name(arch: str, lr: float) -> str:
    return f"{arch}_lr{lr:g}"


def train_hf(arch: str, cfg, lr: float, stream: np.ndarray, val_stream: np.ndarray, tok, ctx: X.Ctx,
             P: dict) -> dict | None:
    """Train (or resume) one run (architecture ``arch`` at learning rate ``lr``) on random windows of
    ``stream``; every run sees the same windows (seeded by step). A checkpoint is written every
    ``steps // 10`` steps and when the time budget runs out. Returns the meta dict (with the
    validation loss on ``val_stream``) once finished, None if the time ran out."""
    from transformers import AutoModelForCausalLM
    name = run_name(arch, lr)
    out = ctx.runs / "models" / name
    done = out / "meta.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(ctx.seed)
    dev = torch.device(ctx.device)
    model = AutoModelForCausalLM.from_config(cfg).float().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    ck, start, log, t_train, n_tok = out / "trainer.pt", 0, [], 0.0, 0
    if ck.is_file():
        st = load_trainer_state(ck, map_location=dev)   # tensors and plain data only: no code in it runs
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start, log, t_train, n_tok = st["step"], st["log"], st["t_train"], st["tokens"]
        print(f"{name}: resuming at step {start}", file=sys.stderr)
    T, B, steps = P["seq_len"], P["batch"], P["steps"]
    if len(stream) <= T + 1:
        raise InterpError(f"the training corpus has {len(stream)} tokens, fewer than seq_len {T}; give more text")

    def lr_at(s):
        if s < P["warmup"]:
            return lr * (s + 1) / P["warmup"]
        p = (s - P["warmup"]) / max(1, steps - P["warmup"])
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    def save(step):
        state = dict(model=model.state_dict(), opt=opt.state_dict(), step=step, log=log, t_train=t_train, tokens=n_tok)
        atomic_save(ck, lambda tmp: torch.save(state, tmp))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu",
                                                                                                      enabled=False)
    every = max(10, steps // 10)
    from tqdm.auto import tqdm
    model.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {name}", disable=not ctx.progress,
               dynamic_ncols=True)
    with reference_kernels(model):
        for step in bar:
            rng = np.random.default_rng([ctx.seed, step])
            st = rng.integers(0, len(stream) - T, size=B)
            x = torch.from_numpy(np.stack([stream[s:s + T] for s in st])).to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            t0 = time.time()
            with autocast:
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_train += time.time() - t0
            n_tok += x.numel()
            if step % 10 == 0 or step + 1 == steps:
                log.append((step + 1, float(loss.item())))
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step + 1 < steps and ctx.out_of_time(reserve_s=P.get("reserve_s", 60)):
                save(step + 1)
                print(f"{name}: time budget reached at step {step + 1}/{steps}; checkpoint saved, run the same "
                      "command again to continue", file=sys.stderr)
                return None
            if (step + 1) % every == 0 and step + 1 < steps:
                save(step + 1)
        model.eval()
        val = stream_loss(model, val_stream, T, P["val_windows"], P["eval_batch"], dev)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    meta = dict(name=name, arch=arch, model_type=cfg.model_type, params=sum(p.numel() for p in model.parameters()),
                steps=steps, batch=B, seq_len=T, lr=lr, log=log, train_s=t_train, train_tokens=len(stream),
                tokens_per_s=n_tok / max(t_train, 1e-9), final_loss=float(np.mean([v for _, v in log[-5:]])),
                val_loss=val, layer_types=list(cfg.layer_types))
    atomic_write_json(done, meta)      # the run's completion mark: written last, whole or not at all
    if ck.is_file():
        ck.unlink()
    return meta


def _pair_worker(arch: str, cfg, lr: float, stream, val_stream, ctx: X.Ctx, P: dict, device: str) -> bool:
    """Worker process: `train_hf` for one pair run on ``device``, its output appended to
    ``<runs>/models/<run>/train.out``. True once the run is finished, False if the time ran out."""
    import contextlib
    import dataclasses
    from transformers import PreTrainedTokenizerFast
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    ctx = dataclasses.replace(ctx, device=device, progress=False)
    tok = PreTrainedTokenizerFast.from_pretrained(str(ctx.runs / "tokenizer"))
    out = ctx.runs / "models" / run_name(arch, lr)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.out", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return train_hf(arch, cfg, lr, stream, val_stream, tok, ctx, P) is not None


def train_pair(cfgs: dict, stream, val_stream, tok, ctx: X.Ctx, P: dict) -> list | None:
    """Train (or resume) the pair's runs, every architecture at every learning rate; returns their
    metas, or None if the time budget ran out first. With ``P["pair_workers"]`` > 1 the runs train
    at once in that many spawned processes, spread round-robin over ``--train-devices`` (a small
    model leaves most of a GPU idle; a run's batches and seed do not depend on where it trains)."""
    jobs = [(arch, cfg, lr) for arch, cfg in cfgs.items() for lr in P["lrs"]]
    workers = min(P.get("pair_workers", 1), len(jobs))
    if workers <= 1:
        metas = []
        for arch, cfg, lr in jobs:
            meta = train_hf(arch, cfg, lr, stream, val_stream, tok, ctx, P)
            if meta is None:
                return None
            metas.append(meta)
        return metas
    import multiprocessing as mp
    devs = ctx.train_devices or [ctx.device]
    worker = X.script_function(_pair_worker)      # each worker loads this script from its file
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(worker, arch, cfg, lr, stream, val_stream, ctx, P, devs[i % len(devs)])
                for i, (arch, cfg, lr) in enumerate(jobs)]
        finished = [f.result() for f in futs]
    if not all(finished):
        print("time budget reached before the pair finished; checkpoints saved, run the same command again to "
              "continue", file=sys.stderr)
        return None
    return [json.loads((ctx.runs / "models" / run_name(arch, lr) / "meta.json").read_text()) for arch, _, lr in jobs]


def overfit_note(best: list[dict], gap: float = 1.0) -> list[str]:
    """A warning when an analysed run's validation loss exceeds its final training loss by more than
    ``gap`` nats: the pair then compares how two memorising models generalise."""
    over = [m for m in best if m["val_loss"] - m["final_loss"] > gap]
    if not over:
        return []
    passes = [f", {m['steps'] * m['batch'] * m['seq_len'] / m['train_tokens']:.0f} passes over its "
              f"{m['train_tokens'] / 1e6:.2f}M training tokens" if m.get("train_tokens") else "" for m in over]
    return ["**The pair overfits its training split**: " + "; ".join(
        f"{m['name']} final training loss {m['final_loss']:.2f} vs validation {m['val_loss']:.2f} nats{x}"
        for m, x in zip(over, passes)) + ". The per-token differences below compare how two memorising models "
        "generalise; more text (`--corpus`) or fewer steps would change them.", ""]


def checkpoint_fingerprint(*dirs) -> str:
    """A short hash of checkpoint directories (resolved paths, file names, sizes, mtimes): the
    cached per-token losses of a changed checkpoint are not reused."""
    h = hashlib.sha1()
    for d in dirs:
        p = Path(d).resolve()
        h.update(str(p).encode())
        for f in sorted(x for x in p.iterdir() if x.is_file()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:10]


def plot_training(metas: list[dict], path):
    plt = X.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    arches = list(dict.fromkeys(m["arch"] for m in metas))
    for m in metas:
        s, v = zip(*m["log"])
        ax.plot(s, v, color=f"C{arches.index(m['arch'])}", ls="-" if m.get("best") else ":", lw=1.2,
                label=f"{m['name']} ({m['params'] / 1e6:.2f}M){' best' if m.get('best') else ''}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    X.save_figure(fig, path)


# --- synthetic probes ---------------------------------------------------------------------------

def training_tasks(spec: str) -> list | None:
    """The tasks a zoo model (default name or directory) was trained on, from its meta.json; None
    if that is not recorded."""
    from interp.demo import default_model_path
    try:
        d = Path(spec) if Path(spec).is_dir() else default_model_path(spec)
        return list(json.loads((d / "meta.json").read_text())["train_config"]["tasks"])
    except (InterpError, OSError, KeyError, TypeError, ValueError):
        return None


def probe_runs(ctx: X.Ctx, P: dict) -> list:
    """The probe models' training runs: matched transformer, gdn75 and gdn100 on the probe tasks,
    one per learning rate of ``P["probe_train"]``."""
    Q = P["probe_train"]
    arms = {a: {"model": X.matched({**Q["model"], "layout": a}), "tasks": list(TL.PROBE_TASKS)}
            for a in ("transformer", "gdn75", "gdn100")}
    return X.make_runs(ctx.runs / "probe_models", arms, Q["lrs"], steps=Q["steps"], batch_size=Q["batch_size"],
                       warmup=Q["warmup"], eval_every=max(1, Q["steps"] // 4), eval_n=128,
                       save_every=max(50, Q["steps"] // 10), device=ctx.device, scan_backend="reference", seed=0)


def train_probe_runs(ctx: X.Ctx, P: dict, progress: bool = False):
    """Train (or continue) the probe models in worker processes until done or until the call's
    deadline less ``eval_reserve``. Returns (runs, status table). Safe to call again: finished runs
    are skipped (so the GPU path can start it in a thread while the text pair trains)."""
    Q, runs = P["probe_train"], probe_runs(ctx, P)
    deadline = None if ctx.deadline is None else ctx.deadline - (0 if ctx.train_only else 60 * Q["eval_reserve"])
    st = X.train_runs(runs, workers=Q["workers"] if ctx.device != "cpu" else 1, deadline=deadline,
                      progress=progress, devices=ctx.train_devices)
    return runs, st


def probe_models(ctx: X.Ctx, P: dict, spec: str):
    """{name: zoo model}: shipped defaults / zoo directories, or ``train``: matched transformer, gdn75
    and gdn100 trained on the probe tasks (learning-rate sweep, best run by validation accuracy)."""
    from interp.models import load_any
    if spec != "train":
        out, sources = {}, {}
        for s in [x for x in spec.split(",") if x]:
            m, kind = load_any(s, device=ctx.device)
            if kind != "zoo":
                raise InterpError(f"probe model '{s}' is a HF checkpoint; the synthetic probes read the task "
                                  "vocabulary, so they take zoo models (a default name or a zoo directory)")
            out[Path(s).name] = m.eval()
            # cached probe rows belong to this checkpoint: a retrained default gets new rows
            from interp.demo import default_model_path
            d = Path(s) if Path(s).is_dir() else default_model_path(s)
            sources[Path(s).name] = f"{s}@{checkpoint_fingerprint(d)}"
        return out, None, sources
    from interp.train import answer_accuracy
    Q = P["probe_train"]
    runs, st = train_probe_runs(ctx, P, progress=ctx.progress)
    done = [r for r, c in zip(runs, st.complete) if c]
    rows = []
    for r in done:
        def val(r=r):
            m = X.load_run(r, ctx.device).set_scan_backend("reference")
            accs = [answer_accuracy(m, T.generate(t, Q["val_n"], seed=99, **{k: v}).to(m.device))
                    for t in TL.PROBE_TASKS for k, vs in T.difficulty_grid(t).items() for v in vs]
            return pd.DataFrame([{"arm": r.arm, "lr": r.lr, "val_acc": float(np.mean(accs))}])
        rows.append(X.ResultLog(ctx.runs / "probe_models" / "eval" / f"val_{r.name}.csv").once(val))
    if len(done) < len(runs):
        return None, st, None
    val = pd.concat(rows, ignore_index=True)
    best = X.best_by(val)
    by_name = {r.name: r for r in runs}
    models = {a: X.load_run(by_name[f"{a}_lr{row.lr:g}"], ctx.device).set_scan_backend("reference")
              for a, row in best.iterrows()}
    return models, st.merge(val, on=["arm", "lr"], how="left"), {a: f"train:{a}_lr{row.lr:g}"
                                                                 for a, row in best.iterrows()}


def run_probes(models: dict, ctx: X.Ctx, P: dict, sources: dict | None = None) -> pd.DataFrame:
    """Per-token probe losses of ``models``, cached in ``<runs>/probes.csv`` per (model source, task,
    knob, value) so a later call continues; ``sources`` {name: where the model came from} keeps a
    shipped default apart from a trained model of the same name."""
    sources = sources or {n: n for n in models}
    log = X.ResultLog(ctx.runs / "probes.csv", ["source", "model", "task", "knob", "value"])
    for task in TL.PROBE_TASKS:
        grid = P.get("probe_grid", {}).get(task)
        for name, m in models.items():
            key = dict(source=sources[name], model=name, task=task)
            todo = {k: [v for v in vs if not log.done(**key, knob=k, value=v)]
                    for k, vs in (grid or T.difficulty_grid(task)).items()}
            todo = {k: vs for k, vs in todo.items() if vs}
            if todo:
                df = TL.task_losses({name: m}, task, n=P["probe_n"], seed=123, grid=todo, progress=ctx.progress)
                log.add(df.assign(source=sources[name]))
    df = log.frame()
    keep = {(sources[n], n) for n in models}
    sel = [(s, m) in keep for s, m in zip(df.source.astype(str), df.model.astype(str))]
    return df[sel].drop(columns="source").reset_index(drop=True)


def plot_probes(df: pd.DataFrame, path, chance: dict):
    plt = X.pyplot()
    combos = list(dict.fromkeys(zip(df.task, df.role)))
    ncol = max(len(set(df[df.task == t].knob)) for t, _ in combos)
    fig, axes = plt.subplots(len(combos), ncol, figsize=(3.6 * ncol, 2.7 * len(combos)), squeeze=False)
    for i, (task, role) in enumerate(combos):
        sub = df[(df.task == task) & (df.role == role)]
        knobs = list(dict.fromkeys(sub.knob))
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(knobs):
                ax.axis("off")
                continue
            g = sub[sub.knob == knobs[j]]
            xs = list(dict.fromkeys(g["value"].astype(str)))
            for k, (model, h) in enumerate(g.groupby("model", sort=False)):
                mean = h.groupby(h["value"].astype(str), sort=False)["cand_loss"].mean().reindex(xs)
                ax.plot(range(len(xs)), mean.values, marker="o", color=f"C{k}", label=model)
            ax.axhline(chance[task], color="gray", ls=":", lw=0.8)
            ax.set_xticks(range(len(xs)), xs)
            ax.set_xlabel(knobs[j], fontsize=8)
            ax.set_title(f"{task} / {role}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("candidate loss (nats)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Synthetic probes: loss among the candidates (dotted: uniform guess)", fontsize=10)
    X.save_figure(fig, path)


# --- report -------------------------------------------------------------------------------------

def _sig(lo, hi) -> str:
    if np.isnan(lo) or np.isnan(hi):
        return ""
    return " *" if lo > 0 or hi < 0 else ""


def corpus_section(corpus: pd.DataFrame, user: bool) -> list[str]:
    L = ["## Corpus", ""]
    if user:
        L += ["User-provided (`--corpus`); domains from the path prefix or the file extension.", ""]
    else:
        L += ["Assembled offline by `interp.tokenloss.default_corpus` from text that ships with this machine "
              "(seeded random draw from sorted candidate lists, documents cut at a line boundary, duplicates "
              "dropped, prose and markup must look English):", ""]
        for dom, srcs in TL.corpus_sources().items():
            L.append(f"* {dom}: " + "; ".join(label for label, _ in srcs))
        L.append("")
    tab = corpus.groupby(["split", "domain"]).agg(documents=("doc_id", "size"), bytes=("bytes", "sum")).reset_index()
    L += X.md_table(tab, F3) + ["", "Evaluation documents (all files of both splits, with sha1 prefixes, are in "
                                     "[corpus.csv](corpus.csv)):", ""]
    ev = corpus[corpus.split == "eval"]
    for dom, g in ev.groupby("domain", sort=False):
        L.append(f"* {dom}: " + ", ".join(f"`{'/'.join(Path(d).parts[-2:]) if '/' in d else d}` ({b / 1000:.1f} kB)"
                                          for d, b in zip(g.doc_id, g.bytes)))
    return L + [""]


def verdict_probes(ps: pd.DataFrame, df: pd.DataFrame, hybrid: str, ref: str, chance_acc: dict,
                   trained: dict | None = None) -> list[str]:
    """One line per probe task / role: the paired candidate-loss difference and whether it agrees
    with the expected sign. ``trained``: {model: tasks it was trained on, or None if unknown}; a
    task that the reference or the hybrid never saw in training is reported as not a test."""
    out = []
    for task, sign in EXPECTED.items():
        for role in [r for r in ("answer", "close") if ((ps.task == task) & (ps.role == r)).any()]:
            a = df[(df.task == task) & (df.role == role) & (df.model == ref)]
            b = df[(df.task == task) & (df.role == role) & (df.model == hybrid)]
            if a.empty or b.empty:
                continue
            keys = ["knob", "value", "example", "position"]
            j = a.merge(b, on=keys, suffixes=("_r", "_h"))
            j["diff"] = j.cand_loss_r - j.cand_loss_h
            agg = j.groupby(["knob", "value", "example"])["diff"].agg(["sum", "count"])
            lo, hi = boot_ci(agg["sum"].to_numpy(float), agg["count"].to_numpy(float), 1000,
                                 np.random.default_rng(0))
            d = j["diff"].mean()
            acc_r, acc_h = j.correct_r.mean(), j.correct_h.mean()
            near = max(acc_r, acc_h) < chance_acc[task] + 0.05
            better = "hybrid" if sign > 0 else "transformer"
            unseen = [m for m in (ref, hybrid) if trained and trained.get(m) is not None and task not in trained[m]]
            if unseen:
                v = (f"**not a test**: {' and '.join(f'`{m}`' for m in unseen)} never trained on {task} (what is left is "
                     "transfer from other tasks)")
            elif near:
                v = "**inconclusive**: both models pick the right candidate at about chance"
            elif (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
                v = "**agrees**"
            elif (lo > 0 and sign < 0) or (hi < 0 and sign > 0):
                v = "**disagrees**"
            else:
                v = "**inconclusive** (the interval contains 0)"
            out.append(f"* {task} / {role} (expected: {better} better): loss({ref}) - loss({hybrid}) = {d:+.3f} "
                       f"[{lo:+.3f}, {hi:+.3f}] nats over all knob values; candidate accuracy {ref} {acc_r:.2f}, "
                       f"{hybrid} {acc_h:.2f} (chance {chance_acc[task]:.2f}): {v}.")
    return out


def report(ctx, P, names, metas, corpus, user_corpus, tl, summ, pdf, ps, probe_note, probe_sweep, chance, chance_acc,
           probe_trained=None):
    a, b = names
    L = []
    L += [f"Model A = `{a}`, model B = `{b}`; `diff` = loss(A) - loss(B) in nats per token (> 0: **{b}** "
          "predicts the token better). Tokens are scored in windows of "
          f"{tl.attrs['seq_len']} tokens with stride {tl.attrs['stride']} (each token sees at least "
          f"{tl.attrs['seq_len'] - tl.attrs['stride']} tokens of context except near the start of its document); "
          "intervals: 95% bootstrap over context windows (1000 resamples; none for a category found in fewer than "
          f"{TL.MIN_CLUSTERS} windows); `*`: the interval excludes 0.", ""]
    if metas:
        L += ["## The model pair (trained here)", "",
              f"Byte-level BPE tokenizer ({P['vocab']} tokens, trained on the training split with `tokenizers`); "
              f"both models: {P['model']['layers']} layers, d={P['model']['d']}, {P['model']['heads']} heads of "
              f"{P['model']['head_dim']}; random init (seed {ctx.seed}), AdamW (warmup {P['warmup']}, cosine to 0.1x), "
              f"{P['steps']} steps x {P['batch']} windows of {P['seq_len']} tokens, the same windows for every run. "
              f"Each architecture gets the same learning-rate sweep ({', '.join(f'{x:g}' for x in P['lrs'])}); the "
              "run with the lowest loss on the validation split (held out from training, not the evaluation text) "
              "is the one analysed (**bold**). GDN layers trained on transformers' pure-torch path.", ""]
        L += X.md_table(pd.DataFrame([dict(
            run=f"**{m['name']}**" if m.get("best") else m["name"], type=m["model_type"],
            params=f"{m['params'] / 1e6:.3f}M",
            layers=" ".join("A" if k == "full_attention" else "G" for k in m["layer_types"]),
            final_train_loss=m["final_loss"], val_loss=m["val_loss"],
            train_tokens_per_s=f"{m['tokens_per_s']:.0f}") for m in metas]), F3)
        L += [""] + X.sweep_edge_note({m["arch"]: m["lr"] for m in metas if m.get("best")}, P["lrs"])
        L += overfit_note([m for m in metas if m.get("best")])
        L += ["![training](training.png)", ""]
    L += corpus_section(corpus, user_corpus)
    L += ["## Held-out loss per domain", ""]
    dom = tl.groupby("domain").agg(tokens=("diff", "size"), loss_a=("loss_a", "mean"), loss_b=("loss_b", "mean"),
                                   diff=("diff", "mean")).reset_index()
    L += X.md_table(dom.rename(columns={"loss_a": f"loss {a}", "loss_b": f"loss {b}"}), F3) + [""]
    def tables(value, lo_col, hi_col, with_n):
        out = []
        for f, g in summ.groupby("facet", sort=False):
            piv = g.assign(cell=[f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{_sig(lo, hi)}" + (f" (n={n})" if with_n else "")
                                 for d, lo, hi, n in zip(g[value], g[lo_col], g[hi_col], g.n)]) \
                   .pivot_table(index="category", columns="domain", values="cell", aggfunc="first", sort=False)
            piv = piv[[c for c in list(TL.DOMAINS) + ["all"] if c in piv.columns]]
            out += [f"### {f}", "", "| category | " + " | ".join(piv.columns) + " |",
                    "|---" * (len(piv.columns) + 1) + "|"]
            out += ["| " + str(i) + " | " + " | ".join("" if (isinstance(x, float) and np.isnan(x)) else str(x)
                                                      for x in r) + " |" for i, r in zip(piv.index, piv.values)]
            out.append("")
        return out
    L += ["## Loss difference by token category", "",
          f"Mean of diff = loss({a}) - loss({b}) per category, 95% interval, token count.", "",
          "![token loss](token_loss.png)", ""]
    L += tables("diff", "ci_lo", "ci_hi", True)
    L += ["## Which tokens gain more than average (excess over the domain's mean difference)", "",
          f"A model that is better overall is better on most categories; the question *which tokens does {b} "
          f"predict better* is answered by the **excess**: the category's mean difference minus the mean difference "
          f"over all tokens of its domain (> 0: {b}'s advantage is larger than on the average token; < 0: smaller, "
          f"or {a} better). Intervals: the same cluster bootstrap, category and domain mean resampled together.", "",
          "![excess](token_loss_excess.png)", ""]
    L += tables("excess", "excess_lo", "excess_hi", False)
    L += ["Full table: [summary.csv](summary.csv); every token: `tokens.parquet` (columns: "
          + ", ".join(tl.columns) + ").", ""]
    L += ["## Synthetic probes", "", probe_note, ""]
    if probe_sweep is not None:
        L += ["Learning-rate sweep of the probe models (validation accuracy, mean over the probe tasks' grids):", ""]
        L += X.md_table(probe_sweep[["arm", "lr", "steps_done", "steps", "val_acc"]], F3) + [""]
        bl = probe_sweep.sort_values("lr").groupby("arm", sort=False)["val_acc"].idxmax()
        L += X.sweep_edge_note({a: probe_sweep.loc[i, "lr"] for a, i in bl.items()}, P["probe_train"]["lrs"])
    if ps is not None and len(ps):
        L += ["Candidate loss (nats; the answer's loss among the task's candidates: 16 colours, 16 boxes, 4 closing "
              "brackets) pooled over each knob's values; diff = loss(ref) - loss(model) with a 95% bootstrap "
              "interval over examples.", ""]
        pooled = pdf.groupby(["task", "role", "model"], sort=False).agg(
            cand_loss=("cand_loss", "mean"), cand_acc=("correct", "mean"), n=("cand_loss", "size")).reset_index()
        L += X.md_table(pooled, F3) + ["", "![probes](probes.png)", "",
                                        "Per knob value: [probes_summary.csv](probes_summary.csv).", ""]
    # verdicts
    V = []
    if ps is not None and len(ps):
        ref = ps.ref.iloc[0]
        hyb = "gdn75" if "gdn75" in set(ps.model) else ps.model.iloc[0]
        V += [f"Synthetic probes, {hyb} vs {ref} (the issue's expectation: hybrid better on pronoun memory and entity "
              "tracking, transformer better on bracket closing):", ""]
        V += verdict_probes(ps, pdf, hyb, ref, chance_acc, probe_trained)
    allrows = summ[summ.domain == "all"]
    sig = allrows[(allrows.ci_lo > 0) | (allrows.ci_hi < 0)]
    V += ["", "Corpus: the issue states expectations for the synthetic probes only; closing brackets are the "
              "natural-text counterpart of the bracket probe, the other categories are reported without a verdict:",
          ""]
    dom = tl.groupby("domain")["diff"].mean()
    V += ["* overall: " + ", ".join(f"{d} {dom[d]:+.3f}" for d in TL.DOMAINS if d in dom)
          + f" nats per token ({b if dom.mean() > 0 else a} better on average); {len(sig)} of {len(allrows)} categories "
          "(domains pooled) have a difference whose interval excludes 0."]
    cb = allrows[(allrows.facet == "delimiter") & (allrows.category == "close_bracket")]
    if len(cb):
        r = cb.iloc[0]
        hyb_is_b = any(x in b.lower() for x in ("hybrid", "gdn", "deltanet", "mamba", "gla"))   # else: no verdict
        absolute = (f"; in absolute terms {a} is better (diff {r['diff']:+.3f})" if r.ci_hi < 0 else
                    f"; in absolute terms {b} is still better (diff {r['diff']:+.3f})" if r.ci_lo > 0 else
                    f"; in absolute terms no resolvable difference (diff {r['diff']:+.3f})")
        rel = ("inconclusive (the interval contains 0 or there is none)" if not (r.excess_lo > 0 or r.excess_hi < 0)
               else f"{b}'s advantage is {'larger' if r.excess_lo > 0 else 'smaller'} on closing brackets than on "
                    f"the average token{absolute}")
        agrees = "" if not hyb_is_b or not (r.excess_lo > 0 or r.excess_hi < 0) else (
            ": **agrees** with the bracket-closing expectation (read relative to the average token)"
            if r.excess_hi < 0 else ": **disagrees** with the bracket-closing expectation")
        V.append(f"* closing brackets in natural text (the corpus counterpart of the bracket probe; expected: the "
                 f"transformer relatively better): excess {r.excess:+.3f} [{r.excess_lo:+.3f}, {r.excess_hi:+.3f}] "
                 f"(n={r.n}), {rel}{agrees}.")
    for sign, word in ((1, "larger"), (-1, "smaller")):
        ex = allrows[(allrows.excess_lo > 0) if sign > 0 else (allrows.excess_hi < 0)]
        ex = ex.reindex(ex.excess.abs().sort_values(ascending=False).index)
        V.append(f"* {b}'s advantage significantly {word} than average (domains pooled): "
                 + ("; ".join(f"{r.facet} = {r.category} {r.excess:+.3f} (diff {r.diff:+.3f}, n={r.n})"
                              for r in ex.itertuples()) or "none") + ".")
    X.write_report(ctx, "E3 — which tokens does the hybrid predict better? (token-level loss decomposition)", L, V)


# --- main ---------------------------------------------------------------------------------------

def build_parser():
    ap = X.parser(NAME, __doc__, PROFILES, seed=True)
    ap.add_argument("--model-a", help="local HF checkpoint dir (model A, e.g. the transformer); None: train a pair")
    ap.add_argument("--model-b", help="local HF checkpoint dir (model B, e.g. the hybrid); None: train a pair")
    ap.add_argument("--corpus", action="append", help="file or directory (repeatable; prefix prose:, code: or "
                                                      "markup: to fix the domain); None: text on this machine")
    ap.add_argument("--probe-models", default=None, help="comma-separated zoo models (default names or dirs) for "
                    "the synthetic probes, the first is the reference; 'train' trains them; 'none' skips; None: the "
                    "profile's")
    ap.add_argument("--seq-len", type=int, default=None, help="evaluation window (tokens; None: the profile's)")
    ap.add_argument("--stride", type=int, default=None, help="evaluation stride (None: seq_len / 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: the profile's)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    with X.setup(a, NAME, PROFILES, argv) as ctx:      # holds the runs and figures directories' writer locks
        return experiment(ctx, a)


def experiment(ctx, a) -> int:
    P = ctx.P
    if not ctx.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    threads = a.threads or P.get("threads")
    if threads:
        torch.set_num_threads(threads)
    if ctx.train_only and a.model_a:
        raise InterpError("--train-only trains the experiment's own pair; with --model-a/--model-b there is nothing "
                          "to train")
    if (a.model_a is None) != (a.model_b is None):
        raise InterpError("give both --model-a and --model-b (or neither: the experiment trains its own pair)")
    seq_len = a.seq_len or P["eval_seq_len"]
    spec = a.probe_models or P["probe_models"]     # the synthetic probes' models
    # corpus
    if a.corpus:
        docs = TL.user_corpus(a.corpus)
        train_docs, eval_docs = ([], docs) if a.model_a else TL.split_docs(docs, P["eval_bytes"])
    else:
        docs = TL.default_corpus(bytes_per_domain=P["train_bytes"] + P["eval_bytes"],
                                 max_doc_bytes=P["max_doc_bytes"], seed=ctx.seed)
        train_docs, eval_docs = TL.split_docs(docs, P["eval_bytes"])
        if a.model_a:
            train_docs = []
    missing = [d for d in TL.DOMAINS if not any(x.domain == d for x in eval_docs)]
    if missing and not a.corpus:
        print(f"note: no {', '.join(missing)} text found on this machine", file=sys.stderr)
    # models
    metas, val_docs = [], []
    if a.model_a:
        from interp.models import load_any
        tok = TL.load_tokenizer(a.model_a)
        if not TL.same_tokenizer(tok, TL.load_tokenizer(a.model_b)):
            raise InterpError(f"'{a.model_a}' and '{a.model_b}' have different tokenizers; per-token losses can only "
                              "be compared on the same tokens")
        models = {}
        for s in (a.model_a, a.model_b):
            m, kind = load_any(s, device=ctx.device)
            if kind != "hf":
                raise InterpError(f"'{s}' is a zoo model: zoo models read the task vocabulary only, so the corpus "
                                  "analysis needs HF checkpoints (zoo models go to --probe-models)")
            models[Path(s).name if Path(s).name not in models else s] = m.eval()
    else:
        train_docs, val_docs = TL.split_docs(train_docs, P["val_bytes"])
        if not train_docs or not val_docs:
            raise InterpError("no training or validation text left after the evaluation split; give a larger --corpus")
        X.check_spec(ctx.runs, dict(profile=ctx.profile, seed=ctx.seed, P={k: v for k, v in P.items() if k not in (
            "time_budget", "threads", "pair_workers", "probe_n", "probe_models", "probe_grid", "probe_train",
            "eval_batch")},
            corpus=[[d.domain, d.doc_id, hashlib.sha1(d.text.encode()).hexdigest()[:10]] for d in docs]), kind=NAME)
        tok = train_tokenizer(train_docs, P["vocab"], ctx.runs / "tokenizer")
        cfgs = pair_configs(len(tok), P["model"], max(P["seq_len"], seq_len))
        stream, val_stream = token_stream(train_docs, tok), token_stream(val_docs, tok)
        # on a GPU the probe models train in worker processes while this process trains the text pair
        bg = (cf.ThreadPoolExecutor(1).submit(train_probe_runs, ctx, P)
              if spec == "train" and ctx.device != "cpu" else None)
        try:
            metas = train_pair(cfgs, stream, val_stream, tok, ctx, P)
            if metas is None:
                return 3
        finally:        # the probe-model workers are waited for on every way out
            probe_st = bg.result()[1] if bg is not None else None
        if ctx.train_only:
            left = 0
            if spec == "train":
                if probe_st is None:
                    _, probe_st = train_probe_runs(ctx, P, progress=ctx.progress)
                left = int((~probe_st.complete).sum())
            print(f"--train-only: text pair trained, {left} probe-model runs unfinished; no evaluation",
                  file=sys.stderr)
            return 0 if not left else 3
        best = {}
        for m in metas:     # lowest validation loss per architecture (ties: the smaller lr, listed first)
            if m["arch"] not in best or m["val_loss"] < best[m["arch"]]["val_loss"]:
                best[m["arch"]] = m
        for m in metas:
            m["best"] = best[m["arch"]] is m
        plot_training(metas, ctx.out / "training.png")
        from interp.models import load_any
        models = {arch: load_any(str(ctx.runs / "models" / m["name"]), device=ctx.device)[0].eval()
                  for arch, m in best.items()}
    names = list(models)
    corpus = pd.concat([TL.corpus_table(train_docs, "train"), TL.corpus_table(val_docs, "val"),
                        TL.corpus_table(eval_docs, "eval")], ignore_index=True)
    X.save_table(corpus, ctx.out / "corpus.csv")
    if ctx.out_of_time(reserve_s=150):
        print("not enough of this call's time budget left to score the evaluation text; run the same command again "
              "to continue", file=sys.stderr)
        return 3
    # per-token losses (finished units are reused by a later call with the same models and text)
    units = ctx.runs / "units" / ("_vs_".join(names) if not a.model_a else
                                  "_vs_".join(names) + "_" + checkpoint_fingerprint(a.model_a, a.model_b))
    tl = TL.compare(models, tok, eval_docs, seq_len=seq_len, stride=a.stride, batch_size=P["eval_batch"], out=units,
                    progress=ctx.progress)
    X.save_table(tl, ctx.out / "tokens.parquet")
    summ = tl.stratify()
    X.save_table(summ, ctx.out / "summary.csv")
    X.save_with(ctx.out / "token_loss.png", lambda f: tl.plot(
        f, summary=summ, title=f"loss({names[0]}) - loss({names[1]}) per token (> 0: {names[1]} better), 95% "
                               "bootstrap CI"))
    X.save_with(ctx.out / "token_loss_excess.png", lambda f: tl.plot(f, summary=summ, value="excess"))
    del models
    # synthetic probes
    from interp.tasks.vocab import BOXES, CLOSE, COLORS
    chance = {"pronoun": math.log(len(COLORS)), "entity_tracking": math.log(len(BOXES)),
              "brackets": math.log(len(CLOSE))}
    chance_acc = {"pronoun": 1 / len(COLORS), "entity_tracking": 1 / len(BOXES), "brackets": 1 / len(CLOSE)}
    pdf = ps = sweep = trained = None
    note = "Skipped (`--probe-models none`)."
    if spec != "none":
        pm, sweep, sources = probe_models(ctx, P, spec)
        if pm is None:
            print("probe models not finished (time budget); run the same command again to continue", file=sys.stderr)
            return 3
        ref = next(iter(pm))
        if spec == "train":
            trained = {n: list(TL.PROBE_TASKS) for n in pm}
            Q = P["probe_train"]
            note = (f"Probe models trained here on {', '.join(TL.PROBE_TASKS)} (matched parameter count, "
                    f"{Q['steps']} steps, learning rates {', '.join(f'{x:g}' for x in Q['lrs'])}; best run per arm "
                    f"by validation accuracy). Reference: `{ref}`.")
        else:
            trained = {n: training_tasks(x) for n, x in zip(pm, [x for x in spec.split(",") if x])}
            untrained = sorted(n for n, t in trained.items() if t is not None and not set(TL.PROBE_TASKS) <= set(t))
            note = (f"Probe models: {', '.join(f'`{n}`' for n in pm)} (reference `{ref}`)."
                    + (f" **{', '.join(f'`{n}`' for n in untrained)} were trained on "
                       + ", ".join(sorted({t for n in untrained for t in trained[n]}))
                       + " only, not on all the probe tasks**: their losses there measure how a model transfers to an "
                       "unseen format, not the published comparison (the full profile trains models on the probe "
                       "tasks)." if untrained else ""))
        pdf = run_probes(pm, ctx, P, sources)
        X.save_table(pdf, ctx.out / "probes.parquet")
        ps = TL.paired_summary(pdf, ref=ref)
        X.save_table(ps, ctx.out / "probes_summary.csv")
        plot_probes(pdf, ctx.out / "probes.png", chance)
    report(ctx, P, names, metas, corpus, bool(a.corpus), tl, summ, pdf, ps, note, sweep, chance, chance_acc, trained)
    print(f"wrote {ctx.out}/report.md")
    return 0


if __name__ == "__main__":
    X.cli(main)
