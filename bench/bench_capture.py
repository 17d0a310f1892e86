"""Whole-model capture overhead: hooks' run_with_cache vs a plain forward, and vs TransformerLens /
nnsight saving the same layer outputs.

    python bench/bench_capture.py            # 12 layers, d=768, B=8, T=2048, bf16 (GPU)
    python bench/bench_capture.py --small    # CPU sanity check (4 layers, d=64, B=2, T=64, fp32)

Part 1, zoo ``gdn75`` (9 Gated DeltaNet + 3 attention layers, 12 heads of 64): a plain forward vs
``hm.run_with_cache`` of every ``resid_pre`` / ``resid_post`` and every GDN layer's ``rec.state`` (all
T per-token states, float32, kept on the device), and each of the two alone; then the states again
with ``state_dtype=torch.bfloat16`` (computed in float32, written in bf16 by the state kernel: half
the bytes), with the largest difference to the float32 states rounded to bf16 for one layer.
Issue #3 target: residuals + states <= 1.5x the plain forward.

Part 2, a random-init HF ``LlamaForCausalLM`` of the same size (12 layers, d=768, SDPA): a plain
forward vs saving every layer's input and output (= resid_pre / resid_post) with hooks, with
TransformerLens 4 (``TransformerBridge.run_with_cache`` with a names filter, on its own copy of the
model) and with nnsight (``LanguageModel.trace`` + ``.save()`` of each layer's input and output).
Each framework's saved tensors are compared with ours (max |diff|). A framework that is not
installed is reported as such.

Times are medians of ``--reps`` runs after one warm-up, with a device sync; each capture row is also
given as the median of its per-rep ratios to a plain forward timed right before it ("paired"), since
the plain forward's own time drifts between runs. Prints a markdown block.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time

import torch

import hooks
from interp.experiment import git_commit
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps, base=None):
    """(median seconds, last result, median of the per-rep ratios to ``base`` or None); one warm-up call
    first. With ``base`` (the plain forward), each rep times ``base`` right before ``fn``, so every ratio
    has its own adjacent denominator: the plain forward's time moved 1.3x between runs (27.6 vs 36.2 ms for
    the same model on H200s), and a ratio to one separately timed baseline carried that spread."""
    def once(f):
        t0 = time.perf_counter()
        r = f()
        sync()
        return time.perf_counter() - t0, r
    out = fn()
    del out
    sync()
    ts, ratios = [], []
    for _ in range(reps):
        tb = once(base)[0] if base is not None else None
        t, out = once(fn)
        ts.append(t)
        if tb is not None:
            ratios.append(t / tb)
        if _ < reps - 1:
            del out
    return statistics.median(ts), out, (statistics.median(ratios) if ratios else None)


def free():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def zoo_part(a, dev, dtype, x, rows):
    torch.manual_seed(0)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=a.d, n_layers=a.layers, layout="gdn75", n_heads=a.heads,
                    head_dim=a.d // a.heads)
    m = HybridLM(cfg).to(dev, dtype).eval()
    hm = hooks.wrap(m)
    resid = [n for n in hm.hook_names if n.endswith((".resid_pre", ".resid_post"))]
    states = [f"blocks.{L.index}.rec.state" for L in hm.layers if L.rec is not None]
    label = f"zoo gdn75 ({len(states)} GDN + {a.layers - len(states)} attn layers, {m.num_params() / 1e6:.0f}M)"
    with torch.no_grad():
        plain = lambda: m(x)  # noqa: E731
        t_plain, _, _ = timed(plain, a.reps)
        rows.append((label, "plain forward", t_plain, 1.0, 1.0, ""))
        bf16 = " (bf16 states)"
        for what, names, sd in (("run_with_cache: residuals", resid, None),
                                ("run_with_cache: all rec.state", states, None),
                                ("run_with_cache: residuals + all rec.state", resid + states, None),
                                ("run_with_cache: all rec.state" + bf16, states, torch.bfloat16),
                                ("run_with_cache: residuals + all rec.state" + bf16, resid + states, torch.bfloat16)):
            free()
            t, (lg, c), paired = timed(lambda names=names, sd=sd: hm.run_with_cache(x, names=names, state_dtype=sd),
                                       a.reps, base=plain)
            gb = sum(v.numel() * v.element_size() for v in c.values()) / 1e9
            note = f"{gb:.2f} GB cached"
            if sd is not None:  # one layer against the float32 states rounded to bf16 (0 = bit-equal)
                del lg
                _, ref = hm.run_with_cache(x, names=states[:1])
                d = (c[states[0]].float() - ref[states[0]].to(sd).float()).abs()
                note += f"; {states[0]} vs fp32->bf16: max diff {d.max().item():.1e}, {(d > 0).float().mean().item():.1e} of values differ"
                del ref, d
            else:
                del lg
            rows.append((label, what, t, t / t_plain, paired, note))
            del c
            free()
    del m, hm
    free()


def hf_llama(a, dev, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=a.d, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      num_key_value_heads=a.heads, intermediate_size=int(round(8 / 3 * a.d)),
                      max_position_embeddings=max(4096, a.seq_len), tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(dev, dtype).eval()


def hf_part(a, dev, dtype, x, rows):
    hf = hf_llama(a, dev, dtype)
    label = f"HF Llama ({a.layers} layers, d={a.d}, {sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M)"
    L = a.layers
    hm = hooks.wrap(hf)
    names = [f"blocks.{i}.{s}" for i in range(L) for s in ("resid_pre", "resid_post")]
    with torch.no_grad():
        plain = lambda: hf(input_ids=x, use_cache=False).logits  # noqa: E731
        t_plain, _, _ = timed(plain, a.reps)
        rows.append((label, "plain forward", t_plain, 1.0, 1.0, ""))
        t, (lg, ours), paired = timed(lambda: hm.run_with_cache(x, names=names), a.reps, base=plain)
        rows.append((label, "hooks run_with_cache (resid_pre + resid_post)", t, t / t_plain, paired, ""))
    ref = {n: v for n, v in ours.items()}
    del lg
    free()

    # TransformerLens 4: a bridge over its own copy (booting a bridge rewires the HF modules)
    try:
        from transformer_lens.model_bridge import TransformerBridge
        from interp.zoo.hf import word_tokenizer
        br = TransformerBridge.boot_transformers("meta-llama/Llama-3.2-1B", hf_model=copy.deepcopy(hf),
                                                 tokenizer=word_tokenizer(), device=str(dev), dtype=dtype)
        keep = {f"blocks.{i}.hook_resid_pre" for i in range(L)} | {f"blocks.{i}.hook_resid_post" for i in range(L)}
        with torch.no_grad():
            t, (_, tl), paired = timed(lambda: br.run_with_cache(x, names_filter=lambda n: n in keep), a.reps,
                                       base=plain)
        diff = max((tl[f"blocks.{i}.hook_{s}"].float() - ref[f"blocks.{i}.{s}"].float()).abs().max().item()
                   for i in range(L) for s in ("resid_pre", "resid_post"))
        rows.append((label, "TransformerLens TransformerBridge.run_with_cache (same names)", t, t / t_plain, paired,
                     f"max diff to ours {diff:.1e}"))
        del br, tl
    except Exception as e:  # noqa: BLE001  (not installed, or it failed: say so in the table)
        rows.append((label, "TransformerLens", None, None, None, f"not run: {type(e).__name__}: {str(e)[:80]}"))
    free()

    # nnsight: save each decoder layer's input and output inside a trace
    try:
        import nnsight
        from interp.zoo.hf import word_tokenizer
        lm = nnsight.LanguageModel(hf, tokenizer=word_tokenizer())

        def trace():
            saved = []
            with lm.trace(x):
                for i in range(L):
                    layer = lm.model.layers[i]
                    saved.append((layer.input.save(), layer.output.save()))
            return saved
        with torch.no_grad():
            t, saved, paired = timed(trace, a.reps, base=plain)
        first = lambda v: v[0] if isinstance(v, tuple) else v  # noqa: E731
        diff = max(max((first(i_).float() - ref[f"blocks.{k}.resid_pre"].float()).abs().max().item(),
                       (first(o_).float() - ref[f"blocks.{k}.resid_post"].float()).abs().max().item())
                   for k, (i_, o_) in enumerate(saved))
        rows.append((label, "nnsight LanguageModel.trace + save (layer inputs + outputs)", t, t / t_plain, paired,
                     f"max diff to ours {diff:.1e}"))
    except Exception as e:  # noqa: BLE001
        rows.append((label, "nnsight", None, None, None, f"not run: {type(e).__name__}: {str(e)[:80]}"))
    free()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="CPU-sized sanity run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp32"])
    ap.add_argument("--skip-hf", action="store_true", help="only the zoo part")
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.small:
        a.batch, a.seq_len, a.d, a.layers, a.heads, a.reps = 2, 64, 64, 4, 2, min(a.reps, 3)
    else:
        a.d, a.layers, a.heads = 768, 12, 12
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype or ("fp32" if a.small else "bf16")]
    x = torch.randint(0, len(VOCAB), (a.batch, a.seq_len), device=dev, generator=torch.Generator(dev).manual_seed(0))
    rows = []
    zoo_part(a, dev, dtype, x, rows)
    if not a.skip_hf:
        hf_part(a, dev, dtype, x, rows)

    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    cmd = "python bench/bench_capture.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n### Capture overhead (`{cmd.strip()}`, "
          f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, git {git_commit()})\n")
    print(f"device: {name}; torch {torch.__version__}; B={a.batch}, T={a.seq_len}, {str(dtype).split('.')[-1]}; "
          f"median of {a.reps} after a warm-up; \"x plain\": to the plain forward row; \"x plain, paired\": median "
          f"of each rep's ratio to a plain forward timed right before it\n")
    print("| model | run | ms | x plain | x plain, paired | note |")
    print("|---|---|---|---|---|---|")
    for model, what, t, ratio, paired, note in rows:
        ms = "-" if t is None else f"{t * 1e3:.1f}"
        r, rp = ("-" if v is None else f"{v:.2f}" for v in (ratio, paired))
        print(f"| {model} | {what} | {ms} | {r} | {rp} | {note} |")


if __name__ == "__main__":
    main()
