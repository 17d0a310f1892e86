"""CPU-side checks of helpers the GPU scripts use (the scripts themselves need CUDA and fla)."""
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from first_config import first_config_only  # noqa: E402


def test_first_config_only_passes_one_config_and_keeps_the_rest():
    seen = []

    def autotune(configs, key, prune_configs_by=None, reset_to_zero=None, **kw):
        seen.append(dict(configs=configs, key=key, prune=prune_configs_by, reset=reset_to_zero, kw=kw))
        return lambda fn: fn

    fake = types.SimpleNamespace(autotune=autotune)
    first_config_only(fake)
    first_config_only(fake)                                  # idempotent: not wrapped twice

    @fake.autotune(configs=["c1", "c2", "c3"], key=["T"], prune_configs_by={"early_config_prune": len},
                   reset_to_zero=["o"], warmup=5)
    def kernel():
        return 1

    fake.autotune(["d1", "d2"], ["K"])(kernel)                # positional form
    assert kernel() == 1
    assert seen[0] == dict(configs=["c1"], key=["T"], prune=None, reset=["o"], kw={"warmup": 5})
    assert seen[1]["configs"] == ["d1"] and seen[1]["key"] == ["K"]
