"""Linear probes: is a tracked fact (a variable's value, a bound value) linearly decodable at a
site, layer by layer, how does that change with distance and load, and is that the model's doing
rather than the probe's?

    from interp import probes
    df = probes.run(models, task="state_recall", target="query_var_value",
                    sites=["resid_post", "rec.state@key"], seeds=[0, 1, 2])
    df.plot()                  # accuracy (band: 95% CI over seeds) and selectivity against layer
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

**Protocol.** Train/test split **by example** (never by token); multinomial logistic regression per
(layer, site) on standardised features (train statistics); a **control task** (Hewitt & Liang 2019)
re-labels each point by a fixed random map of the token id at the probed position into the same
number of classes, so it measures how much the probe can memorise surface identity there;
**selectivity** = accuracy - control. Also reported: ``majority`` (predict the most frequent training
class) and ``surface`` (predict the most frequent training class of the probed token's id: what
the current token alone tells). ``seeds=[...]`` repeats everything (task data, split, control
map) per seed and reports the mean and a 95% t-interval over seeds (``acc_lo``, ``acc_hi``,
``sel_lo``, ``sel_hi``).

**Backends**, one interface: ``torch`` fits every (layer, site) probe of one feature width, task
and control together, as one batched problem (full-batch L-BFGS on a stacked weight tensor;
CUDA if available), ``sklearn`` (LogisticRegression, lbfgs) is the reference. Both minimise the
same objective, mean cross-entropy + ||W||^2 / (2 C N) (sklearn's, divided by C N).

Files: ``targets`` (probe points), ``features`` (sites, `collect`), ``fit`` (backends, `probe`),
``result`` (`ProbeResult`, `aggregate`), ``runs`` (`run`), ``units`` (resumable units on disk),
``cli`` (`interp probe`).
"""
from interp.probes.cli import cli_run
from interp.probes.features import PLAIN, SITES, collect
from interp.probes.fit import BACKENDS, _standardize, fit_sklearn, fit_torch, probe, split
from interp.probes.result import KEYS, ProbeResult, aggregate
from interp.probes.runs import run
from interp.probes.targets import Points, points, target_labels

__all__ = ["run", "collect", "probe", "points", "target_labels", "Points", "ProbeResult", "aggregate", "fit_torch",
           "fit_sklearn", "split", "BACKENDS", "SITES", "PLAIN", "KEYS", "cli_run"]
