"""`interp sae train|eval`: TopK sparse dictionaries (eai-sparsify) on a residual stream, readout,
per-head recurrent state or factored write of one block (interp.sae); training resumes in --out,
evaluation writes a tidy table, a figure and a summary."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.cli.options import add_device, add_knob, add_model, add_seed, finite_float, int_at_least, kv, load_any


def _site_args(p):
    p.add_argument("--site", required=True, help="blocks.<i>.resid_post|resid_pre|resid_mid|mixer_out|mlp_out|"
                   "rec.readout|rec.state|rec.write|rec.write_kd, e.g. blocks.0.rec.state")
    p.add_argument("--head", type=int, default=None, help="one head of a rec.* site (default: all heads)")
    p.add_argument("--task", default="mqar")
    add_knob(p)


def add_parser(sub):
    pa = sub.add_parser("sae", help="train / evaluate TopK sparse autoencoders on states, writes, readouts, "
                        "residual streams")
    s2 = pa.add_subparsers(dest="sae_cmd", required=True)
    tr = s2.add_parser("train", help="train one dictionary (resumable in --out)")
    add_model(tr)
    _site_args(tr)
    tr.add_argument("--k", type=int_at_least(1), default=32, help="active latents per token (TopK)")
    tr.add_argument("--features", type=int_at_least(1), default=4096, help="dictionary size")
    tr.add_argument("--steps", type=int_at_least(1), default=1000)
    tr.add_argument("--batch-size", type=int_at_least(1), default=32, help="task examples per step (all their tokens)")
    tr.add_argument("--lr", type=finite_float(0, above=True), default=None,
                    help="default: sparsify's 2e-4 / sqrt(features / 2^14); "
                    "1e-3 with --rank1")
    tr.add_argument("--auxk-alpha", type=finite_float(0), default=1 / 32)
    tr.add_argument("--dead-tokens", type=int_at_least(1), default=50_000,
                    help="a latent silent this many rows counts as dead")
    tr.add_argument("--save-every", type=int_at_least(1), default=100)
    tr.add_argument("--capture", default=None, help="train on an `interp capture` folder instead of streaming")
    tr.add_argument("--transcode", action="store_true", help="a transcoder: predict --target from --site")
    tr.add_argument("--target", default=None, help="the transcoder's target site, e.g. blocks.0.mlp_out or "
                    "blocks.0.rec.write_kd (with --transcode)")
    tr.add_argument("--rank1", action="store_true", help="rank-1 atoms u v^T for one head's factored write "
                    "(--site blocks.<i>.rec.write_kd --head H; hand-written, interp.sae.rank1)")
    tr.add_argument("--target-head", type=int, default=None, help="one head of a rec.* target (default: all)")
    tr.add_argument("--decoder", default="auto", choices=("auto", "triton", "eager"),  # interp.sae.coder.DECODERS
                    help="sparsify's sparse decoder (auto: its Triton kernels where Triton imports; eager is as fast "
                    "for small dictionaries)")
    add_seed(tr)
    add_device(tr)
    tr.add_argument("--out", default=None, help="default runs/sae/<model>_<site>_k<k>_f<features>")
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(func=cmd_train)
    ev = s2.add_parser("eval", help="FVU, dead/dense, spliced-in accuracy/KL, ground-truth AUROC, interchange")
    ev.add_argument("--coder", required=True, help="a trained run (--out of train) or its coder/ folder")
    add_model(ev)
    _site_args(ev)
    ev.add_argument("--n", type=int_at_least(1), default=256, help="held-out examples")
    ev.add_argument("--n-pairs", type=int_at_least(1), default=256)
    ev.add_argument("--target", default="bound_value", help="task label, e.g. bound_value, var_value[0]; none: skip")
    ev.add_argument("--where", default="answer", help="answer (answer positions) or all (every labelled token)")
    ev.add_argument("--offset", type=int, default=0, help="read the site this many tokens after each point")
    ev.add_argument("--n-align", type=int_at_least(1), default=1,
                    help="aligned latents per value swapped in interchange")
    ev.add_argument("--no-probe", action="store_true", help="skip the latents-needed probes")
    ev.add_argument("--substitution", choices=("firing", "all"), default=None,
                    help="WriteSAE's substitution protocol for a write dictionary (one head's rec.write_kd rank-1, "
                         "or rec.write): the write replaced at one firing token per example, or at all tokens")
    ev.add_argument("--eval-seed", type=int, default=None, help="held-out data seed (default interp.sae.run.EVAL_SEED)")
    add_device(ev)
    ev.add_argument("--out", default=None, help="default: <coder run>/eval")
    ev.add_argument("--overwrite", action="store_true", help="replace an evaluation in --out made with other settings")
    ev.set_defaults(func=cmd_eval, resumes=False)


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


def cmd_train(a):
    from interp.sae import CaptureSource, ModelSource, train
    from interp.sae.coder import use_decoder
    from interp.sae.data import family_of, wrap
    from interp.sae.transcode import PairSource
    use_decoder(a.decoder)
    site, target = _site(a), _target(a)
    if a.rank1:
        from interp.sae.rank1 import check_site
        check_site(site)
    model = load_any(a.model, device=a.device)
    _check_writes(model, site, target)
    if target is not None:
        src = PairSource(model, site, target, a.task, kv(a.knob), a.batch_size, a.seed, a.device)
    elif a.capture:
        src = CaptureSource(a.capture, site, batch_rows=a.batch_size * 32, seed=a.seed,
                            family=family_of(wrap(model), site.layer))
    else:
        src = ModelSource(model, site, a.task, kv(a.knob), a.batch_size, a.seed, a.device)
    tag = site.label() + (f"_to_{target.label()}" if target else "")
    out = a.out or f"runs/sae/{Path(a.model).name}_{tag}_k{a.k}_f{a.features}"
    if a.rank1:
        from interp.sae.rank1 import train_rank1
        res = train_rank1(model, site, src, k=a.k, features=a.features, steps=a.steps, lr=a.lr or 1e-3,
                          seed=a.seed, out=out + ("" if a.out else "_rank1"), save_every=a.save_every,
                          model_name=Path(a.model).name, overwrite=a.overwrite)
    else:
        res = train(model, site, src, k=a.k, features=a.features, steps=a.steps, lr=a.lr, seed=a.seed, out=out,
                    save_every=a.save_every, auxk_alpha=a.auxk_alpha, dead_tokens=a.dead_tokens,
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
        raise InterpError(f"the coder was trained on {meta.get('site')} head {meta.get('head')}, not {site.label()}")
    return coder, meta, folder


def _check_model(folder, digest: str, name):
    """A coder evaluates the model it was trained on (weights ``digest``): its run's spec.json names the digest."""
    from interp.store import read_spec
    run = read_spec(folder.parent) if folder.name == "coder" else None
    trained = ((run or {}).get("spec") or {}).get("model") or {}
    if trained.get("digest") not in (None, digest):
        raise InterpError(f"the coder was trained on model {trained.get('name')!r} (weights {trained.get('digest')}), "
                          f"not on --model {name!r}; valid: the model it was trained on")


def cmd_eval(a):
    from interp.oneshot import one_shot, spec_of
    from interp.store import model_digest
    site = _site(a)
    coder, meta, folder = _coder(a, site)
    model = load_any(a.model, device=a.device)
    digest = model_digest(model)
    _check_model(folder, digest, a.model)
    coder = coder.to(a.device)  # saved coders load on the CPU; evaluation runs where the model is
    stem = f"substitution_{a.substitution}" if a.substitution else "sae_eval"
    out = Path(a.out or (folder.parent / "eval" if folder.name == "coder" else folder / "eval"))
    made = spec_of({a.model: digest}, coder=model_digest(coder), site=site.label(), task=a.task,
                   knobs=sorted(a.knob or []), n=a.n, n_pairs=a.n_pairs, target=a.target, where=a.where,
                   offset=a.offset, n_align=a.n_align, probe=not a.no_probe, substitution=a.substitution,
                   eval_seed=a.eval_seed)
    files = [out / f"{stem}{ext}" for ext in (".csv", ".parquet", ".png", "_summary.md")]
    with one_shot(out / f"{stem}.json", files, made, a.overwrite):
        ev = _substitution(a, model, coder, site) if a.substitution else _evaluate(a, model, coder, site, meta)
        print(ev.summary().round(4).to_string(index=False))
        written = ev.save(out, stem=stem)
    print("wrote " + ", ".join(str(x) for x in written))


def _evaluate(a, model, coder, site, meta):
    from interp.sae import rank1, run_eval
    from interp.sae.run import EVAL_SEED
    label = None if a.target == "none" else a.target
    seed = EVAL_SEED if a.eval_seed is None else a.eval_seed
    causal = dict(n_pairs=a.n_pairs, where=a.where, offset=a.offset, n_align=a.n_align, probe=not a.no_probe)
    if isinstance(coder, rank1.Rank1Coder):
        from interp.sae.run import run_eval_rank1
        return run_eval_rank1(model, coder, site, a.task, kv(a.knob), n=a.n, seed=seed, model_name=Path(a.model).name,
                              target=label, **causal)
    if meta.get("target"):
        from interp.sae import SaeSite
        from interp.sae.transcode import run_eval_transcoder
        return run_eval_transcoder(model, coder, site, SaeSite(meta["target"], meta.get("target_head")), a.task,
                                   kv(a.knob), n=a.n, seed=seed, model_name=Path(a.model).name, target_label=label,
                                   **causal)
    return run_eval(model, coder, site, a.task, kv(a.knob), n=a.n, seed=seed, target=label,
                    model_name=Path(a.model).name, **causal)


def _substitution(a, model, coder, site):
    from interp.sae.run import EVAL_SEED
    from interp.sae.substitute import substitution
    return substitution(model, coder, site, a.task, kv(a.knob), n=a.n, seed=EVAL_SEED if a.eval_seed is None else
                        a.eval_seed, where=a.substitution, model_name=Path(a.model).name)
