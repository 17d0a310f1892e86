"""CPU-side checks of helpers the GPU scripts use (the scripts themselves need CUDA and fla)."""
import importlib.util
from pathlib import Path

import pytest

# tests/gpu/first_config.py, imported by file path (tests/gpu is not a package)
_spec = importlib.util.spec_from_file_location("first_config",
                                               Path(__file__).resolve().parent / "gpu" / "first_config.py")
_first_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_first_config)
first_config_only = _first_config.first_config_only


def test_first_config_only_runs_the_first_config_that_launches_and_keeps_it():
    """A stand-in for Triton's Autotuner (its run benchmarks when it has several configs) and for fla's
    subclass, whose run calls the base one: after the patch, neither benchmarks, configs that run out of
    resources are skipped, and the chosen config stays for later calls."""
    class OOR(Exception):
        pass

    class Autotuner:
        def __init__(self, configs):
            self.configs, self.cache, self.benchmarked, self.launched = list(configs), {}, 0, []

        def run(self, *args, **kwargs):
            if len(self.configs) > 1:
                self.benchmarked += 1
            cfg = self.configs[0]
            if cfg.startswith("big"):
                raise OOR(cfg)
            self.launched.append(cfg)
            return cfg

    class FlaAutotuner(Autotuner):             # fla 0.6's CachedAutotuner: own run, then the base one
        def run(self, *args, **kwargs):
            return super().run(*args, **kwargs)

    first_config_only(Autotuner, OOR)
    first_config_only(Autotuner, OOR)          # idempotent: not wrapped twice
    a = FlaAutotuner(["big1", "big2", "c3", "c4"])
    assert a.run(1) == "c3" and a.run(2) == "c3" and a.configs == ["c3"]
    assert a.benchmarked == 0 and a.launched == ["c3", "c3"]
    b = Autotuner(["only"])
    assert b.run() == "only"
    c = Autotuner(["big1", "big2"])
    with pytest.raises(OOR):                   # nothing launches: the last error, and the configs restored
        c.run()
    assert c.configs == ["big1", "big2"]



def test_the_ieee_flag_goes_through_fla_precision(monkeypatch, capsys):
    """``--ieee`` in the zoo checks' shared options calls `hooks.scan.fla_precision.ieee_dots` (here without fla's
    kernels, so it sets the environment only) and prints what it set; without the flag nothing is set."""
    import argparse
    import os

    from hooks.scan import fla_precision
    monkeypatch.setattr(fla_precision, "_fla_ok", lambda: False)
    for key in fla_precision.ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("sys.argv", ["check", "--layouts", "gdn75"])
    args, chosen = _first_config.parse_check_args(argparse.ArgumentParser(), ["gdn75", "gdn100"])
    assert not args.ieee and chosen == ["gdn75"] and "TRITON_F32_DEFAULT" not in os.environ
    monkeypatch.setattr("sys.argv", ["check", "--ieee"])
    args, chosen = _first_config.parse_check_args(argparse.ArgumentParser(), ["gdn75", "gdn100"])
    assert args.ieee and chosen == ["gdn75", "gdn100"] and os.environ["TRITON_F32_DEFAULT"] == "ieee"
    assert "--ieee: TRITON_F32_DEFAULT: unset -> ieee" in capsys.readouterr().out
