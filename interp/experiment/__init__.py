"""The experiment framework: what every script under ``experiments/`` shares.

An experiment is ``experiments/<name>.py`` with ``PROFILES``, ``build_parser()`` and
``main(argv=None) -> int``; it runs as ``python experiments/<name>.py [--quick | --tiny]`` or through
``interp run experiments/<name>.toml`` (`run_toml`, which maps the TOML's ``[options]`` onto the
same flags). Every call is resumable: it stops cleanly at its ``--time-budget`` and the same command
again continues from the checkpoints and cached results.

* `interp.experiment.context`: the command line (`parser`), the run context (``with setup(...) as
  ctx:``, a `Ctx` holding the writer locks of its runs and figures directories), the time budget,
  devices, `git_commit`;
* `interp.experiment.runs`: learning-rate sweeps of zoo models trained in worker processes
  (`make_runs`, `train_runs`, `best_by`, `matched`);
* `interp.experiment.seeds`: each unit's runs per seed (`unit_runs`) and their cached validation
  (`validate_runs`), how many there are and whether all are done (`n_runs`, `sweep_complete`), the runs
  at each best rate (`chosen`), the sweep table (`sweep_frame`), the sweep on the first training seed and the other seeds at each unit's best
  rate (`sweep_and_seeds`), where each best rate lies (`lr_edges`), verdict labels and numbers with
  intervals over seeds (`label`, `fmt`, `seed_means`), the sweep's report lines (`sweep_lines`), paired
  differences between two arms over seeds (`paired_diff`), the verdict rule of a script's docstring (`rule_text`) and how a
  verdict on the mean replicates seed by seed (`replicated`);
* `interp.experiment.robustness`: how trained arms hold up as one difficulty knob rises (`first_failure`,
  `working_range`, `degradation`), the report table and figure per knob (`knob_table`, `plot_knobs`) and the
  verdict comparing two architectures' robustness on a sequential and a flat task (`crossover_verdict`);
* `interp.experiment.results`: cached result rows (`ResultLog`, one unit file per ``add``), the runs
  directory's configuration (`check_spec`) and the writer locks (`WriterLocks`), all written
  atomically with `interp.store`;
* `interp.experiment.report`: ``report.md`` (`header`, `write_report`, `md_table`, `sweep_edge_note`),
  figures (`pyplot`, `save_figure`) and tables (`save_table`, `save_with`), written atomically;
* `interp.experiment.scripts` / `interp.experiment.toml`: scripts loaded by file path
  (`load_experiment`, `script_function`, `shipped_scripts`) and ``interp run`` (`run_toml`: only the
  experiments the toolkit ships, unless told otherwise).
"""
from interp.experiment.context import (REPO, Ctx, add_common_args, add_run_args, cli, deadline_from, device_name,
                                       git_commit, out_of_time, parser, resolve_device, setup, train_devices,
                                       with_steps)
from interp.experiment.report import (PROFILE_FLAGS, header, md_table, pyplot, runs_note, save_figure, save_table,
                                      save_with, sweep_edge_note, write_report)
from interp.experiment.results import ResultLog, WriterLocks, backend_spec, check_spec
from interp.experiment.runs import (Run, attention_fraction, best_by, load_run, make_runs, matched, n_params,
                                    place, status, train_runs)
from interp.experiment.seeds import (chosen, fmt, label, lr_edges, n_runs, paired_diff, replicated, rule_text,
                                     seed_means, sweep_and_seeds, sweep_complete, sweep_frame, sweep_lines, unit_runs,
                                     validate_runs)
from interp.experiment.scripts import ScriptFunction, load_experiment, script_function, shipped_scripts
from interp.experiment.toml import TOML_KEYS, check_options, run_toml, toml_argv

__all__ = ["REPO", "Ctx", "add_common_args", "add_run_args", "cli", "deadline_from", "device_name", "git_commit",
           "out_of_time", "parser", "resolve_device", "setup", "train_devices", "with_steps",
           "PROFILE_FLAGS", "header", "md_table", "pyplot", "runs_note", "save_figure", "save_table", "save_with",
           "sweep_edge_note", "write_report", "ResultLog", "WriterLocks", "backend_spec", "check_spec",
           "Run", "attention_fraction", "best_by", "load_run", "make_runs", "matched", "n_params", "place", "status",
           "train_runs", "fmt", "label", "lr_edges", "replicated", "rule_text",
           "seed_means", "sweep_and_seeds", "sweep_lines", "paired_diff", "unit_runs", "validate_runs",
           "chosen", "n_runs", "sweep_complete", "sweep_frame",
           "ScriptFunction", "load_experiment", "script_function", "shipped_scripts", "TOML_KEYS", "check_options",
           "run_toml", "toml_argv"]
