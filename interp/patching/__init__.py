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
* ``kl``: mean KL(clean run || patched run) of the next-token distribution.

Sites are hook names without the block prefix (``resid_pre``, ``mixer_out``, ``attn.head_out``,
``rec.state``, ...; see `hooks.names`). A patch is a *cell* (site, layer, position, head): position
``None`` = every position, head ``None`` = every head. ``rec.state`` cells replace the recurrent
state S_t (all heads or one head) and the corrupted run continues its recurrence from it, so later
tokens and layers see the change (TransformerLens' state hook only changes the same-position
read-out).

Speed, written by hand because neither TransformerLens nor nnsight does it: many cells run in one
forward pass (each block of batch rows carries a different cell); blocks before the patched layer
are not recomputed (`HookedModel.start_at` returns the unchanged run's block output); logits are
computed only at the answer position (`HookedModel.logits_at`). Work is split into units (a pair
chunk x a site and layer); each finished unit's sums are appended to ``<out>/units.csv`` so an
interrupted sweep resumes where it stopped.

Files, one job each: ``sites`` (site names, cells, writing a cell), ``run`` (one patched run, answer
metrics), ``sweep`` (the sweep loop), ``window`` (its zoo-only KV-window fast path), ``units``
(resumable unit storage, merging, assembling), ``result`` (`PatchResult`), ``attribution``
(attribution patching).
"""
from interp.patching.sites import (DIRECTIONS, HEAD_SITES, METRICS, RESID_SITES, SITES, layer_kind,
                                   plan_cells)
from interp.patching.run import run_patched
from interp.patching.result import PatchResult
from interp.patching.units import _UnitStore, assemble_units, merge_units, read_csv_exact
from interp.patching.window import _window_ok
from interp.patching.sweep import sweep
from interp.patching.attribution import attribution

__all__ = ["DIRECTIONS", "HEAD_SITES", "METRICS", "RESID_SITES", "SITES", "PatchResult", "assemble_units",
           "attribution", "layer_kind", "merge_units", "plan_cells", "read_csv_exact", "run_patched", "sweep",
           "_UnitStore", "_window_ok"]
