"""Linear probes: is a tracked fact (a variable's value, a bound value) linearly decodable at a
site, layer by layer, how does that change with distance and load, and is that the model's doing
rather than the probe's?

    from interp import probes
    df = probes.run(models, task="state_recall", target="query_var_value",
                    sites=["resid_post", "rec.state@key"], seeds=[0, 1, 2], out="runs/probe")
    df.best_layers()           # per site: the layer chosen on val, its test accuracy, controls, IIA
    df.plot()                  # accuracy (band: 95% CI over seeds) above selectivity, against layer
    df.plot_distance()         # accuracy against steps since the fact was written
    probes.run(..., sweep={"n_pairs": [2, 4, 8]}).plot_load()

**Probe points.** A probe reads a site at the tokens where the target label is defined, with
these exceptions: ``mqar``/``bound_value`` is read only at the query keys (at a context key the
bound value is the *next* token, so nothing before it can hold it). Each point carries its
``distance``, the steps since the fact was written, and its ``write`` position (the token that
wrote it, the token that completes the fact in the input):

* ``state_recall`` ``var_value[j]`` / ``query_var_value``: distance in statements since the
  variable was last assigned (0 at the ``;`` of the assigning statement; equals the task label
  ``steps_since_write`` for the queried variable); write position: the ``;`` of that statement
  (where the task's labels change).
* ``mqar`` ``bound_value``: distance in tokens from the key's context position to the query
  (the task label ``write_distance``); write position: the **value** token after the key in the
  context (the first token at which the binding is complete; a GDN writes k_t v_t^T there with
  both tokens in its short convolution. On the default gdn75 / gdn100, reading out with the key
  token's own k instead decodes the bound value less well at most layers).
* other targets: no distance (<NA>); ``rec.state@key`` is then unavailable.

**Sites** (``SITES``), per layer; a site the model lacks raises an error naming it:

* ``resid_pre``, ``resid_mid``, ``resid_post``, ``mixer_out``, ``mlp_out``: [D].
* ``attn.head_out``: every attention head's output before the out-projection, **concatenated**
  ([H*Dh], the out-projection's input). ``attn.head_out.per_head``: one probe per head, reported
  as sites ``attn.head_out.h0``, ``attn.head_out.h1``, ...
* ``rec.state``: the recurrent state S_t after the token, flattened ([H*K*V]).
* ``rec.readout``: the scan output S_t^T (scale q_t) as the layer consumes it ([H*V]).
* ``rec.state@key``: S_t^T k_w, the state after the probed token read out with the layer's **own
  key rec.k at the write position w** of the probed fact (above), per head, concatenated ([H*V]).
  This asks: would the key that wrote the fact retrieve it from the state now?
* ``rec.state@query``: S_t^T q_t, the state read out with the layer's **current query** rec.q at
  the probed token ([H*V]). For GDN / GLA this is rec.readout without its constant scale (so the
  two give the same probe up to optimisation tolerance; a check); for Mamba2 it lacks the D x_t
  skip term.

**Protocol.** Examples are split train/val/test by example (never by token; ``split``, default
60/20/20, seeded); multinomial logistic regression per (layer, site) on standardised features
(train statistics), fitted on train; ``val_accuracy`` on val picks a site's layer
(`ProbeResult.best_layers`), ``accuracy`` on test is what is reported for it. Baselines:
``majority`` (the most frequent training class) and ``surface`` (the most frequent training class
of the probed token's id: what the current token alone tells). Every pooled row is also split by
whether the model answered the example correctly (``answered``: all / correct / wrong).

**Controls** (``controls``; each scored on the same test points, ``selectivity`` = accuracy -
control, one row per control kind): ``shuffled`` (default) fits the probe to labels permuted among
the points that share a token id (each token keeps its label distribution, nothing else does: at
most the surface accuracy); ``untrained`` (default) fits it to the true labels on the same
architecture freshly initialised (`controls.untrained_copy`: what any network of this shape
exposes); ``hewitt_liang`` (Hewitt & Liang 2019) to a fixed random class per token id - with few
token types (program tokens, keys) this control approaches 1 and says nothing, so a control >=
``flag_at`` (0.9) is flagged ``uninformative``.

**Causal check** (``causal='best'``, default: at each site's layer chosen on val; ``'all'``:
every layer): the probe's subspace (the row space of its class directions, rank <= classes - 1)
is interchanged between test examples whose answer is the target's value and whose labels differ,
at the probed site and the answer position (`interp.interventions`); ``iia`` = how often the
model's answer follows the source's label, against ``iia_random`` (random subspaces of the same
rank) and ``iia_full`` (the whole site). `interp.probes.causal` states the details.

``seeds=[...]`` repeats everything (task data, split, controls, untrained init) per seed and
reports the mean and a 95% t-interval over seeds (``acc_lo``, ``acc_hi``, ``sel_lo``,
``sel_hi``, ``iia_lo``, ``iia_hi``), clipped to what the number can be (accuracies and IIA [0, 1],
selectivity [-1, 1]); ``few_seeds`` flags rows from fewer than 3 seeds, and a warning names the
count where 2 seeds gave intervals (`interp.stats.warn_few_seeds`). A class with fewer than 5 test
points is warned about (`protocol.warn_small_classes`); `interp probe` prints the points per split.

**Padded batches.** ``collect(model, task, target, sites, batch=tasks.pad_batches([b1, b2], side="left"))``
probes examples of different lengths in one padded batch: each runs with the batch's attention mask (as it
runs alone), probe points are at real tokens only (labels are -1 at pads; a `pad_batches` batch finds each
part's points as the part alone gives them), and `probe` on the result fits what the examples unpadded give.

**Backends**, one interface: ``torch`` fits every (layer, site) probe of one feature width, task
and label control together, as one batched problem (full-batch L-BFGS on a stacked weight tensor;
CUDA if available), ``sklearn`` (LogisticRegression, lbfgs) is the reference. Both minimise the
same objective, mean cross-entropy + ||W||^2 / (2 C N) (sklearn's, divided by C N).

**Storage.** ``out``: a result folder of kind 'probe' (`interp.store.Store`): spec.json (models'
digests, task, target, knobs, sweep, sites, n, seeds, C, backend, split, controls, causal
settings), one unit file per finished (model, load, seed) under units/ (probe rows; causal rows),
each written atomically; an interrupted run resumes, a run with other settings is refused naming
the fields (``overwrite=True`` replaces it), a second writer is refused; ``save=True`` also writes
probes.csv / .parquet and the figures there.

Files: ``targets`` (probe points, answer labels), ``features`` (sites, `collect`), ``fit``
(backends), ``controls`` (control labels, untrained copy), ``protocol`` (splits, `probe`),
``causal`` (the causal check), ``result`` (`ProbeResult`, `aggregate`), ``plots``, ``runs``
(`run`, `check_run`), ``units`` (the probe folder), ``cli`` (`interp probe`).
"""
from interp.probes.causal import check as causal_check
from interp.probes.cli import cli_run
from interp.probes.controls import CONTROLS, FLAG_AT, hewitt_liang, shuffled, untrained_copy
from interp.probes.features import PLAIN, SITES, collect
from interp.probes.fit import BACKENDS, _standardize, fit_sklearn, fit_torch, fit_weights
from interp.probes.protocol import SPLIT, assign, probe, split
from interp.probes.result import KEYS, ProbeResult, aggregate
from interp.probes.runs import check_run, run, save_outputs
from interp.probes.targets import Points, answer_labels, points, target_labels

__all__ = ["run", "check_run", "save_outputs", "collect", "probe", "points", "target_labels", "answer_labels", "Points",
           "ProbeResult", "aggregate", "fit_torch", "fit_sklearn", "fit_weights", "split", "assign", "SPLIT", "BACKENDS",
           "SITES", "PLAIN", "KEYS", "CONTROLS", "FLAG_AT", "shuffled", "hewitt_liang", "untrained_copy",
           "causal_check", "cli_run"]
