"""Token-level loss decomposition: which tokens does model B predict better than model A?

Two causal LMs that share a tokenizer read the same text; every token gets both models' loss
(-log p of the token given its context) and features that say what kind of token it is:

* **tag family** of the word the token belongs to: ``function`` (closed-class English word, from
  the shipped lexicon `FUNCTION_WORDS`), ``content`` (any other alphabetic word: open class),
  ``keyword`` / ``identifier`` (Python code, from the stdlib tokenizer), ``number``, ``punct``,
  ``markup`` (inside an HTML tag), ``space``; ``piece`` says whether the token starts its word
  (``first``) or continues it (``cont``).
* **copy features** over the context the model sees: ``copy_len`` = the longest n such that the
  n-gram ending at this token occurred earlier (0: the token is new; n: an (n-1)-token prefix
  match followed by this very token, what an induction mechanism can copy), ``copy_dist`` = how
  far back that earlier occurrence is (tokens), ``prev_dist`` = distance to the previous
  occurrence of the token itself.
* **delimiters**: ``delim`` in ``open_bracket`` / ``close_bracket`` (``()[]{}``), ``open_quote`` /
  ``close_quote`` (ASCII quotes by position, typographic quotes by shape, Python string quotes
  from the tokenizer, backticks), ``open_tag`` / ``close_tag`` (HTML), with ``delim_span`` the
  distance in tokens from a closing delimiter back to its opener.

`compare` returns a tidy `TokenLosses` DataFrame (one row per scored token; ``diff = loss_a -
loss_b`` > 0 where model B is better); `TokenLosses.stratify` gives the mean difference per
category with cluster-bootstrap confidence intervals (clusters: context windows) and
`TokenLosses.plot` the bar figure. `task_losses` does the same for the synthetic tasks
(`interp.tasks`), per token role (answer, closing bracket). `default_corpus` assembles a corpus of
prose, code and markup from text already on the machine (no downloads).

Long texts are cut into windows of ``seq_len`` tokens that overlap by ``seq_len - stride``; each
token is scored once, in the first window where it is not in the overlap, so it sees at least
``seq_len - stride`` tokens of context (except near the start of its document).

Files: `lexicon` (label sets, function words), `tagging` (character-level annotation), `features`
(per-token and copy features), `corpus`, `tokenizer`, `losses` (`compare`, `task_losses`),
`summary` (`stratify`, `paired_summary`), `plot` (`plot_summary`). Experiment E3's parts, imported
from their modules (not re-exported here): `pair` (the three arms trained from scratch: transformer,
sliding-window transformer, GDN hybrid), `seeds` (numbers and verdicts over training seeds), `probes`
(the synthetic probes' models and losses), `report` (its report's sections).
"""

from interp.stats import boot_ci as _boot_ci  # noqa: F401  old private name; experiments e3, e4 still import it
from interp.tokenloss.corpus import (CODE_EXT, MARKUP_EXT, Document, corpus_sources, corpus_table, default_corpus,
                                     domain_of, english_score, split_docs, user_corpus)
from interp.tokenloss.features import copy_features, token_features
from interp.tokenloss.lexicon import DELIMS, DOMAINS, FUNCTION_WORDS, TAGS
from interp.tokenloss.losses import PROBE_TASKS, TokenLosses, compare, task_losses, token_nll, windows
from interp.tokenloss.plot import plot_summary
from interp.tokenloss.summary import (COPY_BINS, COPY_MIN, DIST_BINS, MIN_CLUSTERS, SPAN_BINS, facet_columns,
                                      paired_summary, stratify)
from interp.tokenloss.tagging import CharAnn, annotate
from interp.tokenloss.tokenizer import load_tokenizer, same_tokenizer

__all__ = ["FUNCTION_WORDS", "TAGS", "DELIMS", "DOMAINS", "Document", "TokenLosses", "annotate", "token_features",
           "copy_features", "default_corpus", "user_corpus", "split_docs", "corpus_table", "compare", "stratify",
           "plot_summary", "token_nll", "windows", "load_tokenizer", "same_tokenizer", "task_losses",
           "paired_summary", "PROBE_TASKS"]
