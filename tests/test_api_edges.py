"""Edges of the Python API that gave raw errors or quietly wrong numbers: probes.run's batch_size / flag_at,
patching.run_patched on numpy or list tokens, ratio bootstraps with resamples that have no ratio, seed
intervals over a NaN seed, and intervene's subspaces given as numpy arrays or other array-likes."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from interp import InterpError, patching, probes, tasks
from interp.interventions import intervene
from interp.interventions.plan import subspace_items
from interp.interventions.site import Site
from interp.stats import boot_ci, boot_ratio_cis, seed_interval
from interp.zoo import HybridLM, ZooConfig

torch.set_num_threads(1)   # 2 shared cores


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(tasks.VOCAB), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                              head_dim=16)).eval()


@pytest.fixture(scope="module")
def pairs():
    return tasks.make_pairs("mqar", 4, seed=0)


# --- 1. probes.run: batch_size and flag_at ---------------------------------------------------------------------
PROBE = dict(sites=["resid_post"], n=32, causal=None, controls=("shuffled",), progress=False)


@pytest.mark.parametrize("bs", [0, -1, 2.5, True, "8"])
def test_probe_run_refuses_a_bad_batch_size(tiny, bs):
    with pytest.raises(InterpError, match=r"^batch_size=.* is not valid; valid: integers >= 1$"):
        probes.run({"m": tiny}, "mqar", "bound_value", batch_size=bs, **PROBE)


@pytest.mark.parametrize("fa", ["x", float("nan"), float("inf"), 1.5, -0.1, None, True])
def test_probe_run_refuses_a_bad_flag_at(tiny, fa):
    with pytest.raises(InterpError, match=r"^flag_at=.* is not valid; valid: finite numbers >= 0 and <= 1"):
        probes.run({"m": tiny}, "mqar", "bound_value", flag_at=fa, **PROBE)


def test_probe_settings_keep_good_batch_size_and_flag_at():
    from interp.probes.runs import check_run
    r = check_run(None, "mqar", "bound_value", ["resid_post"], 32, [0], None, "torch", 1.0, (0.6, 0.2, 0.2),
                  ("shuffled",), np.float32(1.0), np.int64(8), {})
    assert (r.flag_at, r.batch_size) == (1.0, 8) and type(r.flag_at) is float and type(r.batch_size) is int


def test_collect_refuses_a_zero_batch_size(tiny):
    with pytest.raises(InterpError, match=r"^batch_size=0 is not valid; valid: integers >= 1$"):
        probes.collect(tiny, "mqar", "bound_value", n=8, batch_size=0)


# --- 2. patching.run_patched: numpy and list tokens --------------------------------------------------------------
def test_run_patched_takes_numpy_and_list_tokens(tiny, pairs):
    a, b = pairs.clean, pairs.corrupted
    ref = patching.run_patched(tiny, a, b, "resid_pre", 1, position=5)
    for conv in (lambda t: t.numpy(), lambda t: t.tolist(), lambda t: t.numpy().astype(np.int32)):
        got = patching.run_patched(tiny, conv(a), conv(b), "resid_pre", 1, position=5)
        assert torch.equal(got, ref)
    assert torch.equal(patching.run_patched(tiny, a.numpy(), b, "resid_pre", 1, position=5), ref)


def test_run_patched_refuses_float_and_ragged_tokens(tiny, pairs):
    a, b = pairs.clean, pairs.corrupted
    with pytest.raises(InterpError, match=r"^base tokens must be integer token ids, got dtype torch.float64; "
                                          r"valid: integer dtypes \(tokens.long\(\) if they are whole numbers\)$"):
        patching.run_patched(tiny, a.numpy().astype(float), b.numpy(), "resid_pre", 1, position=5)
    with pytest.raises(InterpError, match=r"^source tokens must be integer token ids, got dtype torch.bool"):
        patching.run_patched(tiny, a, b.bool(), "resid_pre", 1, position=5)
    with pytest.raises(InterpError, match=r"^base tokens of type list are not valid .*; valid: a \[batch, "):
        patching.run_patched(tiny, [[1, 2, 3], [1, 2]], [[1, 2, 3], [1, 2, 4]], "resid_pre", 1, position=1)
    with pytest.raises(InterpError, match=r"same shape"):   # the shape check still runs on converted tokens
        patching.run_patched(tiny, a.numpy(), b[:, :-1].tolist(), "resid_pre", 1, position=5)


# --- 3. ratio bootstraps: resamples with no ratio ------------------------------------------------------------------
def test_boot_ci_leaves_out_resamples_of_count_zero():
    """A resample of only zero-count clusters has no ratio (it used to count as 0, pulling lo to 0)."""
    rng = np.random.default_rng(0)
    z = np.array([0, 0, 0, 2, 5.])
    assert boot_ci(z, z, 1000, rng) == (1.0, 1.0)                 # the ratio is 1 in every resample that has one
    lo, hi = boot_ci(np.array([0, 0, 1, 2, 5.]), np.array([0, 0, 2, 2, 5.]), 1000, rng)
    assert 0.5 <= lo < hi <= 1.0                                  # every defined ratio lies in [1/2, 1]


def test_boot_ci_is_nan_with_one_cluster_that_has_a_ratio():
    """One cluster with a nonzero count among zero-count ones: no spread to resample, like C < 2."""
    one = np.array([0, 0, 0, 0, 5.])
    lo, hi = boot_ci(one, one, 1000, np.random.default_rng(0))
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = boot_ratio_cis(np.stack([one, [1, 2, 3, 4, 5.]], 1), np.array([0, 0, 0, 0, 5.]), 200,
                            np.random.default_rng(0))
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and np.isfinite(lo[1]) and np.isfinite(hi[1])


def test_boot_ci_keeps_the_sign_of_a_negative_count():
    """Counts are sums of differences in some callers (clean - corrupted): a negative one was clipped to 1e-12."""
    s = np.array([1, 2, 3, 4.])
    assert boot_ci(s, -s, 500, np.random.default_rng(0)) == (-1.0, -1.0)


def test_boot_ci_is_boot_ratio_cis_of_one_column():
    rng = np.random.default_rng(3)
    s, c = rng.normal(size=12), rng.integers(0, 3, size=12).astype(float)
    s[c == 0] = 0
    lo, hi = boot_ratio_cis(s[:, None], c, 400, np.random.default_rng(7))
    assert boot_ci(s, c, 400, np.random.default_rng(7)) == (lo[0], hi[0])


# --- 4. seed_interval over a NaN seed ------------------------------------------------------------------------------
def test_seed_interval_warns_when_it_leaves_out_a_nan_seed():
    with pytest.warns(UserWarning, match=r"^seed_interval: left out 1 of 3 seed values \(NaN or infinite\); the mean "
                                         r"and interval are over the other 2$"):
        got = seed_interval([0.5, float("nan"), 0.7], bounds=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert got == seed_interval([0.5, 0.7], bounds=(0, 1))
        seed_interval([0.5, 0.6, 0.7])
        assert np.isnan(seed_interval([float("nan")] * 2)).all()     # nothing left: NaN, no warning needed


# --- 5. intervene's subspaces: numpy arrays, a short message for other array-likes -------------------------------
def test_subspace_error_names_type_and_shape_not_the_values():
    site = Site("blocks.0.resid_pre")
    with pytest.raises(InterpError) as e:
        subspace_items([pd.DataFrame(np.zeros((2, 32)))], 1, (0,), 32, site)
    msg = str(e.value)
    assert msg.startswith("subspace DataFrame of shape (2, 32) is not valid; valid: ") and "\n" not in msg
    with pytest.raises(InterpError) as e:
        subspace_items([list(range(500))], 1, (0,), 32, site)
    assert len(str(e.value)) < 250 and "..." in str(e.value)


def test_numpy_bases_are_taken_as_tensors():
    site = Site("blocks.0.resid_pre")
    R = np.eye(32)[:2]
    got = subspace_items(R, 1, (0,), 32, site)
    assert [(lb, r) for lb, _, r, _ in got] == [("given", 2)] and torch.equal(got[0][1], torch.eye(32)[:2])
    got = subspace_items([R, {"mine": R[:1]}], 1, (0,), 32, site)
    assert [lb for lb, *_ in got] == ["given", "mine"]
    with pytest.raises(InterpError, match="rank-deficient"):
        subspace_items([np.zeros((2, 32))], 1, (0,), 32, site)



def test_intervene_with_a_numpy_basis_is_intervene_with_its_tensor():
    from interp.models import load_any
    m = load_any("gdn75")[0].eval()
    p, d = tasks.make_pairs("mqar", 8, seed=0), m.config.d_model
    R = np.linalg.qr(np.random.default_rng(0).normal(size=(d, 3)))[0].T          # [3, d], orthonormal rows
    a = pd.DataFrame(intervene(m, p, "blocks.3.resid_pre", subspaces=[R], seeds=()))
    b = pd.DataFrame(intervene(m, p, "blocks.3.resid_pre", subspaces=[torch.as_tensor(R)], seeds=()))
    assert a.n.item() > 0 and a["rank"].item() == 3
    pd.testing.assert_frame_equal(a, b)
