"""Activation patching: which activations does the model *use* for recall and state tracking?

    from interp import patching, tasks
    pairs = tasks.make_pairs("mqar", 64, seed=0)
    res = patching.sweep(model, pairs, sites=["resid_pre"])          # layer x position
    res = patching.sweep(model, pairs, sites=["rec.state"], layers=[2])  # state patched through the recurrence
    res.plot()                                                        # heatmap, attention layers marked

A clean/corrupted pair differs in one controlled fact (the task generators say which) and so in
the answer. **Denoising** runs the corrupted prompt and writes one clean activation into it;
**noising** runs the clean prompt and writes one corrupted activation. Metrics at the answer
position, reported for every patch:

* ``logit_diff``: normalised logit difference, (LD - LD_corrupted) / (LD_clean - LD_corrupted)
  with LD = logit[clean answer] - logit[corrupted answer] averaged over pairs (0 = corrupted run,
  1 = clean run; the IOI-paper convention, also TransformerLens' demos);
* ``prob``: mean probability of the clean answer;
* ``kl``: mean KL(clean run || patched run) of the next-token distribution;

each with a 95% bootstrap interval over pairs (``*_lo``, ``*_hi``). ``direction='both'`` gives
denoising and noising side by side (sufficiency and necessity). Pairs are kept only where the
model answers both prompts correctly (``keep_all=True`` keeps all; ``res.attrs['pairs']`` counts
them). Every position is classed by the task's ground truth (changed fact, write, between, query;
``prefix`` / ``after`` and the residual stream at a changed token are trivial): ``res.ranked()``
leaves trivial cells out (``res[res.trivial]`` has them), ``res.summary()`` aligns each class across pairs and ``res.paths()``
names the path from the fact to the answer; ``res.difference(a, b)`` compares two cells with a
paired interval.

Sites are hook names without the block prefix (``resid_pre``, ``mixer_out``, ``attn.head_out``,
``rec.state``, ...; see `hooks.names`). A patch is a *cell* (site, layer, position, head): position
``None`` = every position, head ``None`` = every head. ``rec.state`` cells replace the recurrent
state S_t (all heads or one head) and the corrupted run continues its recurrence from it, so later
tokens and layers see the change (TransformerLens' state hook only changes the same-position
read-out).

**Padded pairs.** Pairs of different lengths run as one batch padded on the left or right
(``pairs = tasks.pad_pairs([tasks.make_pairs("mqar", 64, n_pairs=4), tasks.make_pairs("mqar", 64, n_pairs=6)])``,
or real prompts: ``patching.prompt_pairs(model, clean, corrupted, clean_answers, corrupted_answers)``): the
``attention_mask`` of a `tasks.PairBatch` is shared by its clean and corrupted prompt, which must have one
length (a pair of two lengths is refused, naming it). Each pair is read at its own answer position and a
position counts each pair's real tokens (position p: its p-th real token, wherever the padding is); a cell's
numbers are over the pairs that have its position (``n`` per cell; the others have NaN per-pair values,
are left out of its class share and, normalising its logit diff, of the clean / corrupted means), so a
padded sweep gives each pair the numbers of its length group swept alone. Padded sweeps take the zoo window
path too (left or right padding: its runs use the mask and it reads each pair from its first real token on).
Attribution patching (`attribution`) takes padded pairs the same way
(runs with the mask, each pair at its own answer position, ``n`` per cell, ``rec.state`` perturbed at each
pair's p-th real token); so do interventions / DAS (`interp.interventions`) and the SAE interchange test.

Speed, written by hand because neither TransformerLens nor nnsight does it: many cells run in one
forward pass (each block of batch rows carries a different cell); blocks before the patched layer
are not recomputed (`HookedModel.start_at` returns the unchanged run's block output); logits are
computed only at the answer position (`HookedModel.logits_at`); in zoo models a resid_pre or mixer_out
patch with attention / GDN layers after it recomputes only the positions from the patched one on (keys and
values of the earlier ones as a KV cache, GDN layers resuming from their state; a GDN layer's ``rec.state``
patch resumes that layer from the patched state); with both directions, each window carries both. Work is
split into items (a direction x a pair chunk x a site and layer); with ``out`` each finished item's per-pair metrics
are one file of an `interp.store.Store` (atomic, spec-checked, locked), so an interrupted sweep
resumes where it stopped and gives the numbers of a run that never stopped.

Files, one job each: ``sites`` (site names, checks, cells, writing a cell), ``run`` (one patched
run, answer metrics), ``plan`` (units, chunks, items, the result spec), ``sweep`` (the sweep loop),
``window`` (its zoo-only window fast path), ``window_state`` (that path for a GDN layer's
``rec.state``), ``pairs`` (padded pairs from real prompts), ``units`` (the sweep's store, merging distributed
parts), ``assemble`` (filtering, cell statistics), ``classes`` (position classes), ``result``
(`PatchResult`), ``evidence`` (summaries by class, paths, paired differences), ``plot``
(heatmaps), ``attribution`` (attribution patching and its comparison with exact patching).
"""
from interp.patching.sites import (DIRECTION_CHOICES, DIRECTIONS, HEAD_SITES, METRICS, RESID_SITES, SITES,
                                   check_layers, check_positions, layer_kind, plan_cells, sites_of)
from interp.patching.run import run_patched
from interp.patching.pairs import prompt_pairs
from interp.patching.result import PatchResult
from interp.patching.classes import CLASSES, position_classes
from interp.patching.plan import Plan, plan_sweep
from interp.patching.units import merge_units, open_units, rank_dirs, read_csv_exact, run_name, units_dir
from interp.patching.window import _window_ok
from interp.patching.sweep import run_items, sweep
from interp.patching.assemble import assemble
from interp.patching.attribution import attribution, compare_attribution

__all__ = ["CLASSES", "DIRECTIONS", "DIRECTION_CHOICES", "HEAD_SITES", "METRICS", "RESID_SITES", "SITES",
           "PatchResult", "Plan", "assemble", "attribution", "check_layers", "check_positions",
           "compare_attribution", "layer_kind", "merge_units", "open_units", "plan_cells", "plan_sweep",
           "position_classes", "prompt_pairs", "rank_dirs", "read_csv_exact", "run_items", "run_name", "run_patched",
           "sites_of", "sweep", "units_dir", "_window_ok"]
