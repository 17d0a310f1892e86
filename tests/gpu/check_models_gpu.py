"""GPU check of hooks' adapters for fla's own model classes (GatedDeltaNetForCausalLM, GLAForCausalLM with
hybrid ``attn`` layers, DeltaNetForCausalLM, KDAForCausalLM, HGRN2ForCausalLM, RWKV7ForCausalLM, Mamba2ForCausalLM), mamba-ssm's MambaLMHeadModel (Mamba1 / Mamba2 + MHA layers) and HF
kimi_linear (KDA through fla's kernels on CUDA; `kimi_rows` also runs on a CPU device as a plumbing check).

Run on a CUDA host (from the repo root):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=$PWD:/tmp/site python3 tests/gpu/check_models_gpu.py [--out results.json] [--first-config] [--ieee]

For every tiny random model and sequence length (T = 40 takes fla's fused-recurrent kernels,
T = 150 its chunk kernels) it checks, and prints as a markdown table:
  logits    capturing every residual name, every rec.state and attn.pattern leaves the logits as
            they were (max |diff|, 0 expected: GDN / GLA / attention pass through the model's own
            kernels; fla Mamba2 and mamba-ssm layers keep their own forward while an equivalent /
            their unfused path runs beside it for the capture)
  final     the last per-token state == the model's own final state (fla: past_key_values[i]
            ['recurrent_state']; mamba-ssm: inference_params ssm_state), relative error
(fla's chunk_delta_rule refuses float32, so the DeltaNet rows at T = 150 are bf16 only; `fla_skip`)
  loop      every per-token state == a float32 step loop on the captured scan inputs, relative error
  pattern   attn.head_out == attn.pattern @ v (the pattern is what the attention op computed)
  patch     patching rec.state at t leaves the patched layer's output and the logits before t unchanged and
            changes the logits from t on (RWKV7 at T = 150: the logits of t's 64-token chunk before t may
            move by kernel rounding, fla's chunk_rwkv7 rounds non-causally within a chunk; `NONCAUSAL_CHUNK`)
  clean     no hook, replaced forward or kernel global is left behind
fla's ``Attention`` imports flash-attn; where flash-attn is not installed a stand-in
(``flash_attn_func`` on torch SDPA) is put in ``sys.modules`` first, and the table says so.
The mamba-ssm part is skipped, with the reason, when ``import mamba_ssm`` fails.
Exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
import types
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

import first_config  # tests/gpu/first_config.py, a sibling of this script

TOL_LOOP = 5e-3      # fp32 Triton kernels use TF32 dots: ~1e-3 relative
TOL_LOGITS = 1e-6    # capture runs the models' own forwards: 0 expected


def flash_attn_shim():
    """A flash_attn module whose flash_attn_func runs torch SDPA (causal, window, GQA)."""
    try:
        import flash_attn  # noqa: F401
        return False
    except ImportError:
        pass
    # transformers checks for flash_attn with importlib.util.find_spec (lru-cached); let it run while
    # flash_attn is truly absent, and give the stand-in a spec so later find_spec calls don't raise
    # "flash_attn.__spec__ is None" (what the 21:44 UTC GPU run hit)
    try:
        import transformers.activations  # noqa: F401  (imports transformers.integrations.flash_attention)
    except Exception:  # noqa: BLE001
        pass
    import importlib.machinery
    mod = types.ModuleType("flash_attn")
    mod.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kw):
        T, S, H, Hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
        k, v = k.repeat_interleave(H // Hk, 2), v.repeat_interleave(H // Hk, 2)
        i = torch.arange(T, device=q.device)[:, None] + (S - T)
        j = torch.arange(S, device=q.device)[None]
        ok = torch.ones(T, S, dtype=torch.bool, device=q.device)
        if causal:
            ok &= j <= i
        if window_size is not None and window_size[0] >= 0:
            ok &= j >= i - window_size[0]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=ok,
                                           scale=softmax_scale)
        return o.transpose(1, 2)

    def flash_attn_varlen_func(*a, **k):
        raise NotImplementedError("flash-attn stand-in: no varlen")
    mod.flash_attn_func, mod.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    sys.modules["flash_attn"] = mod
    return True


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()


# --- float32 step loops on the captured canonical scan inputs --------------------------------------

def loop_states(fam, c, p):
    q, k, v, g = (c[f"{p}.rec.{s}"].float() for s in ("q", "k", "v", "decay"))
    b = c[f"{p}.rec.beta"].float() if fam not in ("gla", "rwkv7") else None
    b = c[f"{p}.rec.b"].float() if fam == "rwkv7" else b  # RWKV7: S = diag(exp(w)) S + b (rec.a^T S) + k v^T
    if fam == "mamba1":
        S = torch.zeros(v.shape[0], v.shape[2], k.shape[-1], device=v.device)
        out = []
        for t in range(v.shape[1]):
            S = g[:, t].exp() * S + (b[:, t] * v[:, t])[..., None] * k[:, t, None, :]
            out.append(S)
        return torch.stack(out, 1)
    B, T, H, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], device=v.device)
    out = []
    for t in range(T):
        a = g[:, t].exp()
        if fam == "gla":
            S = a[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        elif fam == "rwkv7":
            aS = torch.einsum("bhk,bhkv->bhv", c[f"{p}.rec.a"][:, t].float(), S)
            S = a[..., None] * S + b[:, t, :, :, None] * aS[:, :, None, :] + k[:, t, :, :, None] * v[:, t, :, None, :]
        elif fam == "mamba2":
            S = a[..., None, None] * S + b[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        else:  # gdn, kda (kda: the decay per key dim)
            S = (a[..., None] if a.dim() == 3 else a[..., None, None]) * S
            d = b[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
            S = S + k[:, t, :, :, None] * d[:, :, None, :]
        out.append(S)
    return torch.stack(out, 1)


def leftovers(model, globals_before):
    bad = [type(m).__name__ for m in model.modules()
           if m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m)]
    for (_, name), (g, obj) in globals_before.items():
        if g.get(name) is not obj:
            bad.append(f"global {name}")
    return bad


def kernel_globals(model):
    """(module dict, name) -> object for every global the adapters may swap."""
    names = ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "chunk_gla", "fused_recurrent_gla",
             "chunk_delta_rule", "fused_recurrent_delta_rule", "chunk_kda", "fused_recurrent_kda",
             "flash_attn_func", "flash_attn_varlen_func", "selective_scan_fn", "mamba_chunk_scan_combined", "F",
             "chunk_kimi_delta_attention", "recurrent_kimi_delta_attention", "chunk_rwkv7", "fused_mul_recurrent_rwkv7")
    from hooks.adapters.hf_common import forward_globals
    out = {}
    try:  # the function run_with_cache wraps while a GDN call runs (hooks.scan.triton_states.kept_gdn_pieces)
        import fla.ops.gated_delta_rule.chunk as gdn_chunk
        g = vars(gdn_chunk)
        out[(id(g), "chunk_gated_delta_rule_fwd_h")] = (g, g["chunk_gated_delta_rule_fwd_h"])
    except ImportError:
        pass
    for m in model.modules():
        g = forward_globals(m)
        for n in names:
            if n in g:
                out[(id(g), n)] = (g, g[n])
    return out


# --- the state-patch check -------------------------------------------------------------------------------

# Families whose GPU kernel rounds non-causally within a chunk: fla's RWKV7Attention calls chunk_rwkv7 (T >= 64
# without grad) with safe_gate=True and chunk_size=64, whose tensor-core A-stage
# (fla/ops/generalized_delta_rule/dplr/chunk_A_fwd.py, chunk_dplr_fwd_A_kernel_intra_tensorcore) factors
# exp2(gi[i] - gi[j]) around the chunk's middle row (q exp2(gi - gi[mid]) . k exp2(gi[mid] - gi), TF32 / bf16 dot
# operands): exact arithmetic is causal, but the rounding of a row's output depends on the decays of its chunk up
# to the middle row, i.e. on later tokens. Family -> chunk length.
NONCAUSAL_CHUNK = {"rwkv7": 64}


def exact_before(hm, i, t, T):
    """The position before which a state patch at (layer ``i``, ``t``) must leave the logits unchanged: t, or the
    start of t's chunk where a later layer's kernel rounds non-causally within its chunks (`NONCAUSAL_CHUNK`)."""
    c0 = t
    for L in hm.layers:
        n = NONCAUSAL_CHUNK.get(getattr(L, "rec_family", None)) if L.rec is not None and L.index > i else None
        if n and T >= n:
            c0 = min(c0, t - t % n)
    return c0


def patch_check(hm, x, i, row):
    """Patch layer ``i``'s state at t = T // 2 with another batch row's: the patched layer's output before t is
    unchanged (what hooks keeps: the kernel's own readout), the logits before `exact_before` are unchanged, those in
    [exact_before, t) move only by kernel rounding (TOL_LOOP; bf16 5e-2), those from t on change, by more than
    that rounding. Sets row patch_ok, patch_exact_before, patch_layer_rel, patch_drift_rel."""
    T, t = x.shape[1], x.shape[1] // 2
    sname, mname = f"blocks.{i}.rec.state", f"blocks.{i}.mixer_out"
    own = [mname] if mname in hm.hook_names else []
    with torch.no_grad():
        _, co = hm.run_with_cache(x.roll(1, 0), names=[sname])
        base, cb = hm.run_with_cache(x, names=own, hooks=[(sname, lambda S, n: None)])

        def put(S, n):
            S = S.clone()
            S[:, t] = co[sname][:, t]
            return S
        pt, cp = hm.run_with_cache(x, names=own, hooks=[(sname, put)])
    c0 = exact_before(hm, i, t, T)
    scale = base.float().abs().max().item()
    d = (pt.float() - base.float()).abs().amax(-1).amax(0)  # [T]: the largest logit change at each position
    exact = d[:c0].max().item() if c0 else 0.0
    drift = d[c0:t].max().item() if t > c0 else 0.0
    layer = max([((cp[n][:, :t].float() - cb[n][:, :t].float()).abs().max() /
                  cb[n].float().abs().max().clamp(min=1e-6)).item() for n in own] or [0.0])
    tol = TOL_LOOP if row["dtype"] == "float32" else 5e-2
    after = d[t:].max().item()
    row.update(patch_exact_before=c0, patch_layer_rel=layer, patch_drift_rel=drift / scale)
    row["patch_ok"] = bool(layer <= 1e-5 and exact <= 1e-5 * scale and drift <= tol * scale
                           and after > max(1e-4, 10 * drift))


# --- one model ------------------------------------------------------------------------------------------

def check(name, model, x, final_states):
    """final_states: {layer: final state in our layout} from the model's own cached forward."""
    import hooks
    row = {"model": name, "T": x.shape[1], "dtype": str(next(model.parameters()).dtype).split(".")[-1]}
    hm = hooks.wrap(model)
    row["adapter"] = type(hm.adapter).__name__
    before = kernel_globals(model)
    rec = [L for L in hm.layers if L.rec is not None]
    att = [L for L in hm.layers if L.attn is not None]
    names = [n for n in hm.hook_names if n.endswith(("resid_pre", "resid_post", "mixer_out", "mlp_out"))]
    names += [f"blocks.{L.index}.rec.{s}" for L in rec for s in ("q", "k", "v", "decay", "beta", "a", "b", "state",
                                                               "readout") if f"blocks.{L.index}.rec.{s}" in hm.hook_names]
    names += [f"blocks.{L.index}.attn.{s}" for L in att for s in ("q", "k", "v", "pattern", "head_out")]
    with torch.no_grad():
        ref = hm(x)
        lg, c = hm.run_with_cache(x, names=names)
    row["logits_diff"] = (lg.float() - ref.float()).abs().max().item()
    row["logits_ok"] = row["logits_diff"] <= TOL_LOGITS * max(1.0, ref.float().abs().max().item())
    fin, lp = [], []
    for L in rec:
        p = f"blocks.{L.index}"
        S = c[f"{p}.rec.state"]
        if L.index in final_states:
            fin.append(rel(S[:, -1], final_states[L.index]))
        lp.append(rel(S, loop_states(L.rec_family, c, p)))
    row["final_rel"] = max(fin) if fin else None
    row["loop_rel"] = max(lp) if lp else None
    row["states_ok"] = (not fin or max(fin) <= TOL_LOOP) and (not lp or max(lp) <= TOL_LOOP) and len(fin) == len(rec)
    pe = []
    for L in att:
        p = f"blocks.{L.index}"
        pat, v, o = c[f"{p}.attn.pattern"], c[f"{p}.attn.v"].float(), c[f"{p}.attn.head_out"].float()
        H = pat.shape[1]
        v = v.repeat_interleave(H // v.shape[2], 2)
        pe.append(rel(torch.einsum("bhij,bjhd->bihd", pat, v), o))
    row["pattern_rel"] = max(pe) if pe else None
    row["pattern_ok"] = not pe or max(pe) <= TOL_LOOP
    if rec:
        patch_check(hm, x, rec[0].index, row)
    else:
        row["patch_ok"] = None

    def boom(tensor, n):
        raise RuntimeError("boom")
    try:
        hm.run_with_hooks(x, hooks=[(names[-1], boom)])
    except RuntimeError:
        pass
    bad = leftovers(model, before)
    row["clean_ok"] = not bad
    if bad:
        row["leftovers"] = bad[:5]
    row["ok"] = all(row[k] is not False for k in ("logits_ok", "states_ok", "pattern_ok", "patch_ok", "clean_ok"))
    return row


# --- fla ---------------------------------------------------------------------------------------------------

def fla_final_states(model, x, hm_layers):
    from hooks.adapters.fla_models import layer_kind
    with torch.no_grad():
        out = model(input_ids=x, use_cache=True)
    cache = out.past_key_values
    res = {}
    for L in hm_layers:
        if L.rec is None:
            continue
        S = cache[L.index]["recurrent_state"].float()
        # fla: GDN / GLA / HGRN2 / KDA [V, K] (state_v_first), Mamba2 [P, N]; DeltaNet, RWKV7 already [K, V]
        res[L.index] = S if layer_kind(L.rec) in ("delta", "rwkv7") else S.transpose(-1, -2)
    return res


def fla_skip(name, dtype, T):
    """Why a row is not run (None: it is)."""
    if "DeltaNet" in name and dtype == torch.float32 and T > 64:
        return "skipped: fla's chunk_delta_rule (T > 64) refuses float32"
    return None


def fla_models(dev, dtype):
    from fla.models import DeltaNetConfig, DeltaNetForCausalLM, GatedDeltaNetConfig, GatedDeltaNetForCausalLM, \
        GLAConfig, GLAForCausalLM, HGRN2Config, HGRN2ForCausalLM, KDAConfig, KDAForCausalLM, Mamba2Config, \
        Mamba2ForCausalLM, RWKV7Config, RWKV7ForCausalLM
    common = dict(vocab_size=512, hidden_size=256, fuse_cross_entropy=False)
    yield "fla GDN (+attn L1, GVA 4->8)", GatedDeltaNetForCausalLM(GatedDeltaNetConfig(
        num_hidden_layers=4, num_heads=4, num_v_heads=8, head_dim=64, expand_v=1.0,
        attn={"layers": [1], "num_heads": 4}, **common))
    yield "fla GDN neg-eig", GatedDeltaNetForCausalLM(GatedDeltaNetConfig(
        num_hidden_layers=2, num_heads=4, head_dim=64, allow_neg_eigval=True, **common))
    yield "fla GLA (+attn L2, window 32)", GLAForCausalLM(GLAConfig(
        num_hidden_layers=4, num_heads=4, attn={"layers": [2], "num_heads": 4, "window_size": 32}, **common))
    yield "fla DeltaNet (+attn L1)", DeltaNetForCausalLM(DeltaNetConfig(
        num_hidden_layers=3, num_heads=4, attn={"layers": [1], "num_heads": 4}, **common))
    yield "fla DeltaNet neg-eig, sum-norm", DeltaNetForCausalLM(DeltaNetConfig(
        num_hidden_layers=2, num_heads=4, allow_neg_eigval=True, qk_norm="sum", qk_activation="relu", **common))
    yield "fla KDA (+attn L1, GVA 4->8)", KDAForCausalLM(KDAConfig(
        num_hidden_layers=3, num_heads=4, num_v_heads=8, head_dim=64, attn={"layers": [1], "num_heads": 4}, **common))
    yield "fla KDA safe-gate lower-bound", KDAForCausalLM(KDAConfig(
        num_hidden_layers=2, num_heads=4, head_dim=64, safe_gate=True, lower_bound=-5.0, **common))
    yield "fla HGRN2", HGRN2ForCausalLM(HGRN2Config(num_hidden_layers=3, expand_ratio=64, **common))
    yield "fla RWKV7 (pre_norm, value residual)", RWKV7ForCausalLM(RWKV7Config(
        num_hidden_layers=3, head_dim=64, decay_low_rank_dim=32, gate_low_rank_dim=64, a_low_rank_dim=32,
        v_low_rank_dim=16, **common))
    yield "fla Mamba2", Mamba2ForCausalLM(Mamba2Config(
        num_hidden_layers=3, num_heads=8, head_dim=64, state_size=64, expand=2, n_groups=1, chunk_size=64,
        **common))


def spice(model):
    """O(1) random weights so that every path matters to the logits (the libraries' inits leave the
    recurrences nearly inert and shrink output projections)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            leaf = n.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(torch.empty(p.shape).uniform_(0, 2, generator=g))
            elif leaf == "dt_bias":
                p.copy_(torch.empty(p.shape).uniform_(-3, 0, generator=g))
            elif p.dim() >= 2 and "embed" not in n:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--only", default=None,
                    help="comma list of row-name words to run, e.g. GLA,Mamba2 (matched case-insensitively "
                         "against 'fla GDN (+attn L1, GVA 4->8)', 'fla GDN neg-eig', 'fla GLA ...', 'fla DeltaNet ...', "
                         "'fla KDA ...', 'fla HGRN2', 'fla RWKV7 ...', 'fla Mamba2', 'mamba-ssm', 'HF kimi_linear')")
    first_config.add_flag(ap)
    first_config.add_ieee_flag(ap)
    args = ap.parse_args()
    only = [w.strip().lower() for w in (args.only or "").split(",") if w.strip()]

    def wanted(name):
        return not only or any(w in name.lower() for w in only)
    assert torch.cuda.is_available(), "needs CUDA"
    dev = torch.device("cuda")
    shim = flash_attn_shim()
    first_config.apply(args)     # after the stand-in: --ieee imports fla, whose Attention looks for flash-attn then
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"torch {torch.__version__}" + ("  (flash-attn not installed: SDPA stand-in for fla Attention)" if shim else ""))
    rows = []
    try:
        import fla
        print(f"fla {getattr(fla, '__version__', '?')}")
        for name, model in fla_models(dev, torch.float32):
            if not wanted(name):
                continue
            torch.manual_seed(0)
            spice(model)
            for dtype in (torch.float32, torch.bfloat16):
                m = model.to(dev, dtype).eval()
                for T in (40, 150):
                    if fla_skip(name, dtype, T):
                        rows.append({"model": name, "T": T, "dtype": str(dtype).split(".")[-1],
                                     "skipped": fla_skip(name, dtype, T)})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    x = torch.randint(0, 512, (2, T), device=dev, generator=torch.Generator(dev).manual_seed(T))
                    import hooks
                    L = hooks.wrap(m).layers
                    try:
                        row = check(name, m, x, fla_final_states(m, x, L))
                        if dtype != torch.float32:  # bf16: logits unchanged + clean only; states vs loop loosely
                            row["states_ok"] = row["final_rel"] is None or row["final_rel"] < 5e-2
                            row["pattern_ok"] = row["pattern_rel"] is None or row["pattern_rel"] < 5e-2
                            row["ok"] = all(row[k] is not False for k in
                                            ("logits_ok", "states_ok", "pattern_ok", "patch_ok", "clean_ok"))
                    except Exception as e:  # noqa: BLE001  a failed model is a row, not the end of the run
                        traceback.print_exc()
                        row = {"model": name, "T": T, "dtype": str(dtype).split(".")[-1], "ok": False,
                               "error": f"{type(e).__name__}: {e}"[:300]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    except ImportError as e:
        rows.append({"model": "fla", "ok": False, "error": f"import fla failed: {e}"})
        print(rows[-1])
    if wanted("mamba-ssm"):
        rows += mamba_ssm_rows(dev)
    if wanted("hf kimi_linear"):
        rows += kimi_rows(dev)
    print("\n| model | T | dtype | logits max diff | final rel | loop rel | pattern rel | patch | clean | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else (f"{v:.2e}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"| {r['model']} | {r.get('T', '')} | {r.get('dtype', '')} | {r.get('skipped') or r.get('error')} "
                  f"| | | | | | {'skip' if 'skipped' in r else 'FAIL'} |")
            continue
        print(f"| {r['model']} | {r['T']} | {r['dtype']} | {fmt(r['logits_diff'])} | {fmt(r['final_rel'])} | "
              f"{fmt(r['loop_rel'])} | {fmt(r['pattern_rel'])} | {fmt(r['patch_ok'])} | {fmt(r['clean_ok'])} | "
              f"{'ok' if r['ok'] else 'FAIL'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    sys.exit(0 if all(r.get("ok") or "skipped" in r for r in rows) else 1)


# --- HF kimi_linear (KDA through fla's kernels on CUDA) -----------------------------------------------------

def kimi_rows(dev):
    """HF kimi_linear on CUDA: its KDA layers call fla's chunk / fused-recurrent KDA kernels where fla is
    installed (transformers' hub-kernel fallback), which `hooks.adapters.hf_kimi` intercepts."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(
        "kimi_linear", vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=64, qk_rope_head_dim=16,
        qk_nope_head_dim=48, v_head_dim=64, num_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        linear_head_dim=64, linear_num_heads=4, linear_conv_kernel_dim=4, pad_token_id=0, bos_token_id=None,
        eos_token_id=1, layer_types=["linear_attention", "full_attention"] * 2, q_lora_rank=None,
        mlp_layer_types=["dense"] * 4)
    rows = []
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).to(dev, torch.float32).eval()
    for T in (40, 150):
        x = torch.randint(2, 512, (2, T), device=dev, generator=torch.Generator(dev).manual_seed(T))
        try:
            with torch.no_grad():
                out = m(input_ids=x, use_cache=True)
            cache = out.past_key_values
            final = {i: cache.layers[i].recurrent_states[0].float() for i, blk in enumerate(m.model.layers)
                     if blk.block_type == "linear_attention"}
            row = check("HF kimi_linear (KDA + MLA)", m, x, final)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row = {"model": "HF kimi_linear", "T": T, "dtype": "float32", "ok": False,
                   "error": f"{type(e).__name__}: {e}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --- mamba-ssm ----------------------------------------------------------------------------------------------

def mamba_ssm_rows(dev):
    try:
        import mamba_ssm  # noqa: F401
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        from mamba_ssm.utils.generation import InferenceParams
    except Exception as e:  # noqa: BLE001
        msg = f"skipped: import mamba_ssm failed ({type(e).__name__}: {str(e)[:120]})"
        print(f"mamba-ssm: {msg}")
        return [{"model": "mamba-ssm MambaLMHeadModel", "skipped": msg}]
    rows = []
    for layer in ("Mamba1", "Mamba2"):
        ssm = {"layer": layer} if layer == "Mamba1" else {"layer": layer, "headdim": 64, "d_state": 64, "chunk_size": 64}
        cfg = MambaConfig(d_model=256, n_layer=4, vocab_size=512, ssm_cfg=ssm, attn_layer_idx=[1],
                          attn_cfg={"num_heads": 4, "causal": True}, rms_norm=True, fused_add_norm=True,
                          residual_in_fp32=True, d_intermediate=0 if layer == "Mamba1" else 512)
        torch.manual_seed(0)
        m = MambaLMHeadModel(cfg, device=dev, dtype=torch.float32).eval()
        spice(m)
        for T in (40, 150):
            x = torch.randint(0, 512, (2, T), device=dev)
            try:
                ip = InferenceParams(max_seqlen=T, max_batch_size=2)
                with torch.no_grad():
                    m(x, inference_params=ip)
                final = {}
                for i, blk in enumerate(m.backbone.layers):
                    st = ip.key_value_memory_dict.get(i)
                    if st is not None and type(blk.mixer).__name__ in ("Mamba", "Mamba2"):
                        s = st[1].float()
                        final[i] = s if layer == "Mamba1" else s.transpose(-1, -2)  # Mamba2: [H, P, N] -> [H, N, P]
                row = check(f"mamba-ssm {layer} (+MHA L1)", m, x, final)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                row = {"model": f"mamba-ssm {layer}", "T": T, "dtype": "float32", "ok": False,
                       "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
