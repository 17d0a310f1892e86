"""`interp patch`: activation patching sweeps, printed ranked (with the paths by position class) and
written as CSV / parquet / heatmap / JSON (interp.patching; interp.distributed.sweep with --distributed)."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.cli.options import (add_device, add_knob, add_model, add_n, add_seed, int_at_least, kv, load_scaled,
                                positions, scale_args)


def add_parser(sub):
    pa = sub.add_parser("patch", help="activation patching: layer x position (or every site of --layer) heatmaps")
    add_model(pa)
    pa.add_argument("--task", help="task whose prompt pairs to patch (default mqar; or give --pairs)")
    add_knob(pa)
    pa.add_argument("--pairs", help="a UTF-8 file of real prompt pairs instead of --task, one per line: clean<TAB>"
                    "corrupted<TAB>clean answer<TAB>corrupted answer (an answer is one token; zoo models read "
                    "task-vocabulary words); a pair's prompts must give equal token counts, pairs of different "
                    "lengths are padded (--pad-side) and positions count each pair's real tokens")
    pa.add_argument("--pad-side", default=None, choices=["left", "right"],
                    help="where --pairs are padded (None: left, or right for a model that takes right padding only: "
                         "HF rwkv, xlstm, recurrent_gemma)")
    pa.add_argument("--layer", help="patch every site of this layer (or comma list: each layer's own sites); "
                    "default: resid_pre of every layer")
    pa.add_argument("--site", action="append", help="hook site without the block prefix, e.g. resid_pre, "
                    "mixer_out, attn.head_out, rec.state (repeatable)")
    pa.add_argument("--positions", default="all", help="all (default), 3,5,9 or 0:20 (end exclusive; within the prompts' length)")
    pa.add_argument("--heads", action="store_true", help="one cell per head (head sites)")
    pa.add_argument("--metric", default="logit_diff", help="logit_diff (normalised), prob or kl: ranks and colours")
    pa.add_argument("--direction", default="both", choices=["both", "denoise", "noise"],
                    help="denoise (sufficiency), noise (necessity) or both side by side")
    pa.add_argument("--keep-all", action="store_true", help="keep every pair (default: only pairs the model "
                    "answers correctly on both prompts)")
    pa.add_argument("--attribution", action="store_true", help="also run attribution patching and compare")
    add_n(pa, 64, help="prompt pairs")
    add_seed(pa)
    pa.add_argument("--top", type=int_at_least(1), default=15, help="rows of the ranked table")
    pa.add_argument("--batch-size", type=int_at_least(1), default=256, help="rows per forward pass (pairs x cells)")
    pa.add_argument("--matmul", default="fp32", choices=["fp32", "tf32x3"], help="fp32 (default) or tf32x3: the "
                    "model's float32 CUDA linear layers as three TF32 GEMMs of split operands, about fp32's "
                    "accuracy and faster on H100/H200 (hooks.matmul)")
    add_device(pa)
    pa.add_argument("--out", default="runs/patch", help="output folder (units of unfinished sweeps in <out>/.units/)")
    pa.add_argument("--overwrite", action="store_true", help="replace a sweep of this name in --out made with other "
                    "settings (default: resume it, refusing other settings)")
    scale_args(pa)
    pa.set_defaults(func=cmd_patch)


def _layers(spec, n_layers: int):
    """--layer '11' or '3,7' or '0:4' -> checked layer indices; None (every layer) without it."""
    from interp.patching import check_layers
    if spec is None:
        return None
    layers = positions(spec, "--layer")
    if not layers:
        raise InterpError(f"--layer '{spec}' selects no layer; valid: 0..{n_layers - 1} (e.g. 3, 3,7 or 0:4)")
    return check_layers(layers, n_layers)


def _positions(spec, T: int):
    from interp.patching import check_positions
    pos = positions(spec)
    if pos is not None and not pos:
        raise InterpError(f"--positions '{spec}' selects no position; valid: 0..{T - 1} (e.g. 3,5,9 or 0:{T})")
    return check_positions(pos, T)


def _read_pairs(path, hm, kind, model, side):
    """The padded PairBatch of a --pairs file (`interp.patching.prompt_pairs`)."""
    from interp import patching
    from interp.models import _hf_tokenizer
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InterpError(f"--pairs '{path}' cannot be read as UTF-8 text ({e}); valid: a readable UTF-8 file of "
                          "clean<TAB>corrupted<TAB>clean answer<TAB>corrupted answer lines") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 4 or not all(x.strip() for x in f):
            raise InterpError(f"--pairs '{path}' line {i} has {len(f)} tab-separated fields; valid: clean<TAB>"
                              "corrupted<TAB>clean answer<TAB>corrupted answer, none empty")
        rows.append([x.strip() for x in f])
    if not rows:
        raise InterpError(f"--pairs '{path}' holds no pair")
    if hm.tokenizer is None and kind == "hf":
        import hooks
        hm = hooks.wrap(hm.model, tokenizer=_hf_tokenizer(model))
    cols = list(zip(*rows))
    return patching.prompt_pairs(hm, *cols, side=side, meta={"file": str(path)})


def _print_result(a, res):
    b, p = res.attrs["baselines"], res.attrs["pairs"]
    print(f"{a.model} on {a.task or a.pairs or 'mqar'}: {p['kept']} of {p['n']} pairs kept ({p['filter']}; "
          f"{p['dropped']} dropped), "
          f"{'/'.join(dict.fromkeys(res.direction))}: logit diff clean {b['clean_logit_diff']:.3f}, "
          f"corrupted {b['corrupted_logit_diff']:.3f}; p(clean answer) clean {b['clean_prob']:.3f}, "
          f"corrupted {b['corrupted_prob']:.3f}")
    print(res.ranked(a.metric, k=a.top).round(4).to_string(index=False))
    triv = res[res.trivial]
    if len(triv):
        top = triv.ranked(a.metric, k=3, exclude_trivial=False)
        best = "; ".join(f"{r.site}{f' h{r.head}' if r.head >= 0 else ''} L{r.layer} pos {r.position}"
                         for r in top.itertuples())
        print(f"left out {len(triv)} trivial cells (before the change / after the answer / residual stream at a "
              f"changed token; res[res.trivial]), strongest: {best}")
    if (res.position >= 0).any():
        print("paths by position class (best aligned slot, 95% interval over pairs):")
        for line in res.describe_paths():
            print("  " + line)


def _compare_attribution(hm, pairs, res, sites, layers, a, path: Path):
    """Attribution patching over the same sites (not attn.pattern): print its Pearson r against the
    exact denoising sweep, per site, and write both side by side to ``path``."""
    from interp import patching
    from interp.store import save_csv
    att = patching.attribution(hm, pairs, sites=[s for s in sites if s != "attn.pattern"], layers=layers,
                               model_name=Path(a.model).name, keep_all=a.keep_all, heads=a.heads)
    m, table = patching.compare_attribution(res, att)
    print(f"attribution patching vs exact (normalised logit diff): Pearson r = "
          f"{m.logit_diff.corr(m.logit_diff_attribution):.3f} over {len(m)} cells")
    print(table[["site", "cells", "pearson_r", "sign_agree", "max_abs_err"]].round(3).to_string(index=False))
    save_csv(path, m, index=False)


OUTPUTS = (".csv", ".parquet", ".png", ".json", "_attribution.csv")   # a sweep's files beside its .units/<name>


def _drop_outputs(out: Path, name: str):
    """--overwrite: the old outputs of ``name`` go with its old units (a call stopped before it writes its own leaves
    none beside the new spec), under the units' writer lock (a sweep of that name running now refuses this)."""
    from interp.lock import Lock
    from interp.patching import units_dir
    units = units_dir(out, name)
    lock = Lock(units) if units.is_dir() else None
    if lock is not None:
        lock.acquire()
    try:
        for suffix in OUTPUTS:
            (out / f"{name}{suffix}").unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.release()


def cmd_patch(a):
    import hooks
    from interp import distributed, patching, tasks as T
    if a.pairs is not None and (a.task is not None or a.knob):
        raise InterpError("give --task (with --knob) or --pairs, not both")
    model, kind, ctx = load_scaled(a)
    hm = hooks.wrap(model)
    if a.pairs is not None:
        pairs, task = _read_pairs(a.pairs, hm, kind, a.model, a.pad_side), Path(a.pairs).stem
    else:
        task = a.task or "mqar"
        pairs = T.make_pairs(task, a.n, seed=a.seed, **kv(a.knob))
    layers = _layers(a.layer, hm.n_layers)
    if a.metric not in patching.METRICS:
        raise InterpError(f"metric '{a.metric}' is not valid; valid: {', '.join(patching.METRICS)}")
    if a.direction == "noise" and a.attribution:
        raise InterpError("--attribution estimates denoising effects; use it with --direction denoise or both")
    sites = a.site or patching.sites_of(hm.hook_names, layers)
    pos = _positions(a.positions, pairs.clean.shape[1])
    name, out, model_name = patching.run_name(a.model, task, layers), Path(a.out), Path(a.model).name
    if a.overwrite and (ctx is None or ctx.is_main):
        _drop_outputs(out, name)
    res = distributed.sweep(hm, pairs, out=patching.units_dir(out, name), ctx=ctx or distributed.Context(),
                            sites=sites, layers=layers, positions=pos, heads=a.heads, direction=a.direction,
                            batch_size=a.batch_size, model_name=model_name, overwrite=a.overwrite,
                            keep_all=a.keep_all, matmul=a.matmul)
    if ctx is not None and not ctx.is_main:
        return
    _print_result(a, res)
    if a.attribution:
        _compare_attribution(hm, pairs, res, sites, layers, a, out / f"{name}_attribution.csv")
    res.save(out, name, a.metric)
    print(f"wrote {out}/{name}.csv, .parquet, .png, .json")
