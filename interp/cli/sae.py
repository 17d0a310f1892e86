"""`interp sae train|eval`: TopK sparse dictionaries (eai-sparsify) on a residual stream, readout,
per-head recurrent state or factored write of one block (interp.sae); training resumes in --out,
evaluation writes a tidy table, a figure and a summary."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.checks import MAX_EXAMPLES, MAX_FEATURES
from interp.cli.options import (add_device, add_knob, add_model, add_seed, check_out, finite_float, int_at_least, kv,
                                load_any, refuse_unused)

TASK = "mqar"   # --task's default (None until then, so that --capture can refuse it)


def int_in(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi] (`int_at_least` with a ceiling)."""
    import argparse
    at_least = int_at_least(lo)

    def parse(s):
        v = at_least(s)
        if v > hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range; valid: integers >= {lo} and <= {hi}")
        return v
    parse.__name__ = f"integer in {lo}..{hi}"
    return parse


def _site_args(p):
    p.add_argument("--site", required=True, help="blocks.<i>.resid_post|resid_pre|resid_mid|mixer_out|mlp_out|"
                   "rec.readout|rec.state|rec.write|rec.write_kd, e.g. blocks.0.rec.state")
    p.add_argument("--head", type=int, default=None, help="one head of a rec.* site (default: all heads)")
    p.add_argument("--task", default=None, help=f"default {TASK}")
    add_knob(p)


def add_parser(sub):
    pa = sub.add_parser("sae", help="train / evaluate TopK sparse autoencoders on states, writes, readouts, "
                        "residual streams")
    s2 = pa.add_subparsers(dest="sae_cmd", required=True)
    tr = s2.add_parser("train", help="train one dictionary (resumable in --out)")
    add_model(tr)
    _site_args(tr)
    tr.add_argument("--k", type=int_in(1, MAX_FEATURES), default=32,
                    help="active latents per token (TopK), <= --features")
    tr.add_argument("--features", type=int_in(1, MAX_FEATURES), default=4096, help="dictionary size")
    tr.add_argument("--steps", type=int_at_least(1), default=1000)
    tr.add_argument("--batch-size", type=int_in(1, MAX_EXAMPLES), default=32,
                    help="task examples per step (all their tokens); with --capture 32x this many rows")
    tr.add_argument("--lr", type=finite_float(0, above=True), default=None,
                    help="default: sparsify's 2e-4 / sqrt(features / 2^14); "
                    "1e-3 with --rank1")
    tr.add_argument("--auxk-alpha", type=finite_float(0), default=None, help="default 1/32 (not with --rank1)")
    tr.add_argument("--dead-tokens", type=int_at_least(1), default=None,
                    help="a latent silent this many rows counts as dead (default 50000; not with --rank1)")
    tr.add_argument("--save-every", type=int_at_least(1), default=100)
    tr.add_argument("--capture", default=None, help="train on an `interp capture` folder instead of streaming")
    tr.add_argument("--transcode", action="store_true", help="a transcoder: predict --target from --site")
    tr.add_argument("--target", default=None, help="the transcoder's target site, e.g. blocks.0.mlp_out or "
                    "blocks.0.rec.write_kd (with --transcode)")
    tr.add_argument("--rank1", action="store_true", help="rank-1 atoms u v^T for one head's factored write "
                    "(--site blocks.<i>.rec.write_kd --head H; hand-written, interp.sae.rank1)")
    tr.add_argument("--target-head", type=int, default=None, help="one head of a rec.* target (default: all)")
    tr.add_argument("--decoder", default=None, choices=("auto", "triton", "eager"),  # interp.sae.coder.DECODERS
                    help="sparsify's sparse decoder (default auto: its Triton kernels where Triton imports; eager is "
                    "as fast for small dictionaries; not with --rank1)")
    add_seed(tr)
    add_device(tr)
    tr.add_argument("--out", default=None, help="default runs/sae/<model>_<site>_k<k>_f<features>")
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(func=cmd_train)
    ev = s2.add_parser("eval", help="FVU, dead/dense, spliced-in accuracy/KL, ground-truth AUROC, interchange")
    ev.add_argument("--coder", required=True, help="a trained run (--out of train) or its coder/ folder")
    add_model(ev)
    _site_args(ev)
    ev.add_argument("--n", type=int_in(1, MAX_EXAMPLES), default=256, help="held-out examples")
    ev.add_argument("--n-pairs", type=int_in(1, MAX_EXAMPLES), default=None, help=f"default {CAUSAL['n_pairs']}")
    ev.add_argument("--target", default=None, help="task label, e.g. bound_value (default), var_value[0]; none: skip "
                    "ground truth and interchange")
    ev.add_argument("--where", default=None, choices=("answer", "all"),
                    help="answer (answer positions, default) or all (every labelled token)")
    ev.add_argument("--offset", type=int, default=None, help="read the site this many tokens after each point (0)")
    ev.add_argument("--n-align", type=int_at_least(1), default=None,
                    help="aligned latents per value swapped in interchange (default 1; at most --features)")
    ev.add_argument("--no-probe", action="store_true", help="skip the latents-needed probes")
    ev.add_argument("--substitution", choices=("firing", "all"), default=None,
                    help="WriteSAE's substitution protocol for a write dictionary (one head's rec.write_kd rank-1, "
                         "or rec.write): the write replaced at one firing token per example, or at all tokens")
    ev.add_argument("--eval-seed", type=int_at_least(0), default=None,
                    help="held-out data seed (default interp.sae.run.EVAL_SEED)")
    add_device(ev)
    ev.add_argument("--out", default=None, help="default: <coder run>/eval")
    ev.add_argument("--overwrite", action="store_true", help="replace an evaluation in --out made with other settings")
    ev.set_defaults(func=cmd_eval, resumes=False)


CAUSAL = {"target": "bound_value", "n_pairs": 256, "where": "answer", "offset": 0, "n_align": 1}   # eval's defaults


def _site(a):
    from interp.sae import SaeSite
    return SaeSite(a.site, a.head)


def _target(a):
    """The transcoder target of `interp sae train` (None without --transcode), checked before the model loads."""
    from interp.sae import SaeSite
    from interp.sae.transcode import check_pair
    if not a.transcode:
        if a.target is not None or a.target_head is not None:
            raise InterpError("--target / --target-head name a transcoder's target: add --transcode")
        return None
    if a.target is None:
        raise InterpError("--transcode needs --target SITE, e.g. --site blocks.0.resid_mid --target blocks.0.mlp_out")
    if a.capture or a.rank1:
        raise InterpError("--transcode streams from the model; --capture and --rank1 are for autoencoders only")
    target = SaeSite(a.target, a.target_head)
    check_pair(_site(a), target)
    return target


def _check_writes(model, *sites):
    """Write sites need a layer whose factored writes interp.sae.writes computes (exit 2 otherwise)."""
    from interp.sae import writes as W
    from interp.sae.data import family_of, wrap
    for s in sites:
        if s is not None and s.kind in ("write", "write_kd"):
            fam = family_of(wrap(model), s.layer)
            if fam not in W.FAMILIES:
                raise InterpError(f"{s.name}: block {s.layer} is {fam or 'attention'}; factored writes exist for "
                                  f"{', '.join(W.FAMILIES)} layers")


def _train_options(a):
    """Refuse the options that do not apply to this kind of run and settings out of range, before the model loads;
    returns the --out folder (default runs/sae/<model>_<site>_k<k>_f<features>[_rank1])."""
    from interp.sae import checks
    site, target = _site(a), _target(a)
    if a.rank1:
        from interp.sae.rank1 import check_site
        check_site(site)
        refuse_unused("--rank1", [("--auxk-alpha", a.auxk_alpha), ("--dead-tokens", a.dead_tokens),
                                  ("--decoder", a.decoder)], "--k, --features, --lr, --steps, --batch-size, --seed "
                      "(the rank-1 coder has no AuxK loss and no sparsify decoder)")
    if a.capture is not None:
        refuse_unused("--capture", [("--task", a.task), ("--knob", a.knob)],
                      "the capture's own examples (--task and --knob are for streaming from the model)")
    tag = site.label() + (f"_to_{target.label()}" if target else "")
    out = a.out if a.out is not None else \
        f"runs/sae/{Path(a.model).name}_{tag}_k{a.k}_f{a.features}" + ("_rank1" if a.rank1 else "")
    check_out(out)
    checks.train_args(a.k, a.features, a.steps, a.save_every, a.seed, a.lr, a.auxk_alpha or 0.0,
                      a.dead_tokens or 1, out)
    return site, target, out


def cmd_train(a):
    from interp.sae import CaptureSource, ModelSource, train
    from interp.sae.coder import use_decoder
    from interp.sae.data import family_of, wrap
    from interp.sae.transcode import PairSource
    site, target, out = _train_options(a)
    use_decoder(a.decoder or "auto")
    task = a.task or TASK
    model = load_any(a.model, device=a.device)
    _check_writes(model, site, target)
    if target is not None:
        src = PairSource(model, site, target, task, kv(a.knob), a.batch_size, a.seed, a.device)
    elif a.capture:
        src = CaptureSource(a.capture, site, batch_rows=a.batch_size * 32, seed=a.seed,
                            family=family_of(wrap(model), site.layer), model=model, device=a.device)
    else:
        src = ModelSource(model, site, task, kv(a.knob), a.batch_size, a.seed, a.device)
    if a.rank1:
        from interp.sae.rank1 import train_rank1
        res = train_rank1(model, site, src, k=a.k, features=a.features, steps=a.steps, lr=a.lr or 1e-3,
                          seed=a.seed, out=out, save_every=a.save_every, model_name=Path(a.model).name,
                          overwrite=a.overwrite)
    else:
        res = train(model, site, src, k=a.k, features=a.features, steps=a.steps, lr=a.lr, seed=a.seed, out=out,
                    save_every=a.save_every, auxk_alpha=1 / 32 if a.auxk_alpha is None else a.auxk_alpha,
                    dead_tokens=50_000 if a.dead_tokens is None else a.dead_tokens,
                    model_name=Path(a.model).name, overwrite=a.overwrite, target=target)
    last = res.metrics.iloc[-1] if len(res.metrics) else None
    if last is not None:
        print(f"{site.label()}: step {int(last.step)}, training FVU {last.fvu:.4f}, dead {last.dead_frac:.3f}")
    how = "interp.sae.rank1.load" if a.rank1 else "sparsify.SparseCoder.load_from_disk"
    print(f"wrote {res.path} (loads with {how})")


def _coder(a, site):
    """(coder, meta, folder) of --coder, checked: a coder there, trained at --site; its run's model (spec.json)."""
    from interp.sae import load, rank1
    p = Path(a.coder)
    folder = p / "coder" if (p / "coder" / "cfg.json").is_file() else p
    if not (folder / "cfg.json").is_file():
        raise InterpError(f"{a.coder} holds no coder (no cfg.json there or in coder/); train one with interp sae train")
    coder, meta = rank1.load(folder) if rank1.is_rank1(folder) else load(folder)
    if meta and (meta.get("site"), meta.get("head")) != (site.name, site.head):
        hd = meta.get("head")
        raise InterpError(f"the coder was trained on {meta.get('site')} head {hd}, not {site.label()}; valid: --site "
                          f"{meta.get('site')}" + ("" if hd is None else f" --head {hd}"))
    return coder, meta, folder


def _check_model(folder, meta: dict, digest: str, name):
    """A coder evaluates the model it was trained on (weights ``digest``): its interp.json records the digest (and so
    does its run's spec.json, where the folder is a run's coder/), wherever the coder was copied to."""
    from interp.store import read_spec
    run = read_spec(folder.parent) if folder.name == "coder" else None
    for made in ((meta or {}).get("spec"), (run or {}).get("spec")):
        trained = made.get("model") if isinstance(made, dict) else None
        trained = trained if isinstance(trained, dict) else {}
        if trained.get("digest") not in (None, digest):
            raise InterpError(f"the coder was trained on model {trained.get('name')!r} (weights "
                              f"{trained.get('digest')}), not on --model {name!r}; valid: the model it was trained on")


def _eval_options(a, coder):
    """The causal options of `interp sae eval` with their defaults, None where they do not apply (refused if given
    there: --substitution, --target none); the target label, offset and --n-align checked before anything runs."""
    given = [("--target", a.target), ("--n-pairs", a.n_pairs), ("--where", a.where), ("--offset", a.offset),
             ("--n-align", a.n_align), ("--no-probe", a.no_probe or None)]
    if a.substitution:
        refuse_unused("--substitution", given, "--n, --task, --knob, --eval-seed (the substitution protocol has no "
                      "ground truth or interchange)")
        return dict.fromkeys(CAUSAL)
    if a.target == "none":
        refuse_unused("--target none", given[1:], "a --target label for ground truth and interchange")
        return dict.fromkeys(CAUSAL)
    opt = {k: CAUSAL[k] if getattr(a, k) is None else getattr(a, k) for k in CAUSAL}
    if opt["n_align"] > coder.num_latents:
        raise InterpError(f"--n-align {opt['n_align']} is more than the coder's {coder.num_latents} latents; valid: "
                          f"1..{coder.num_latents}")
    from interp import tasks as T
    from interp.sae.groundtruth import points
    from interp.sae.run import EVAL_SEED
    batch = T.generate(a.task or TASK, a.n, seed=EVAL_SEED if a.eval_seed is None else a.eval_seed, **kv(a.knob))
    if len(points(batch, opt["target"], opt["where"], opt["offset"])[0]) == 0:
        raise InterpError(f"no points for --target {opt['target']} at --where {opt['where']} --offset "
                          f"{opt['offset']}; valid: an offset that stays inside the examples ({batch.tokens.shape[1]} "
                          "tokens), e.g. 0")
    return opt


def cmd_eval(a):
    from interp.oneshot import one_shot, spec_of
    from interp.sae.checks import tidy_on_failure
    from interp.store import model_digest
    site = _site(a)
    if a.out is not None:
        check_out(a.out)
    coder, meta, folder = _coder(a, site)
    opt = _eval_options(a, coder)
    model = load_any(a.model, device=a.device)
    digest = model_digest(model)
    _check_model(folder, meta, digest, a.model)
    coder = coder.to(a.device)  # saved coders load on the CPU; evaluation runs where the model is
    stem = f"substitution_{a.substitution}" if a.substitution else "sae_eval"
    out = Path(a.out or (folder.parent / "eval" if folder.name == "coder" else folder / "eval"))
    made = spec_of({a.model: digest}, coder=model_digest(coder), site=site.label(), task=a.task or TASK,
                   knobs=sorted(a.knob or []), n=a.n, **opt, probe=opt["target"] is not None and not a.no_probe,
                   substitution=a.substitution, eval_seed=a.eval_seed)
    files = [out / f"{stem}{ext}" for ext in (".csv", ".parquet", ".png", "_summary.md")]
    with tidy_on_failure(out, store=False), one_shot(out / f"{stem}.json", files, made, a.overwrite):
        ev = _substitution(a, model, coder, site) if a.substitution else _evaluate(a, model, coder, site, meta, opt)
        print(ev.summary().round(4).to_string(index=False))
        written = ev.save(out, stem=stem)
    print("wrote " + ", ".join(str(x) for x in written))


def _evaluate(a, model, coder, site, meta, opt):
    from interp.sae import rank1, run_eval
    from interp.sae.run import EVAL_SEED
    label = opt["target"]
    seed = EVAL_SEED if a.eval_seed is None else a.eval_seed
    causal = {k: v for k, v in opt.items() if k != "target" and v is not None}
    causal["probe"] = not a.no_probe
    task = a.task or TASK
    if isinstance(coder, rank1.Rank1Coder):
        from interp.sae.run import run_eval_rank1
        return run_eval_rank1(model, coder, site, task, kv(a.knob), n=a.n, seed=seed, model_name=Path(a.model).name,
                              target=label, **causal)
    if meta.get("target"):
        from interp.sae import SaeSite
        from interp.sae.transcode import run_eval_transcoder
        return run_eval_transcoder(model, coder, site, SaeSite(meta["target"], meta.get("target_head")), task,
                                   kv(a.knob), n=a.n, seed=seed, model_name=Path(a.model).name, target_label=label,
                                   **causal)
    return run_eval(model, coder, site, task, kv(a.knob), n=a.n, seed=seed, target=label,
                    model_name=Path(a.model).name, **causal)


def _substitution(a, model, coder, site):
    from interp.sae.run import EVAL_SEED
    from interp.sae.substitute import substitution
    return substitution(model, coder, site, a.task or TASK, kv(a.knob), n=a.n,
                        seed=EVAL_SEED if a.eval_seed is None else a.eval_seed, where=a.substitution,
                        model_name=Path(a.model).name)
