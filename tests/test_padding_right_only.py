"""Padded batches on the HF families that take right padding only (rwkv, xlstm: the model ignores attention_mask;
recurrent_gemma: its convolution reads left pads): every hooks entry point refuses left padding with one line,
right padding gives at every real token what each prompt gives alone, generation refuses padded prompts, and
interp's prompt pairs pad them on the right (a patching sweep equal to each length group swept alone)."""
import numpy as np
import pytest
import torch

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
import hooks
from hooks.names import HookError
from interp import InterpError, patching
from test_adapters_recurrent_gemma import make as rg_make
from test_adapters_rwkv import make as rwkv_make
from test_adapters_xlstm import make as xlstm_make
from test_padding import LENS, assert_padded_equals_each_alone, padded

torch.set_num_threads(1)
MODELS = {"rwkv": lambda: rwkv_make("plain"), "xlstm": xlstm_make, "recurrent_gemma": rg_make}
model = H.cached(lambda kind: MODELS[kind]())


def _prompts(m):
    return [H.toks(m.config.vocab_size, B=1, n=n, seed=n)[0] for n in LENS]


@pytest.mark.parametrize("kind", list(MODELS))
def test_left_padding_is_refused_everywhere(kind, tmp_path):
    from interp.capture import capture
    hm = hooks.wrap(model(kind))
    toks, mask = padded(_prompts(hm.model), "left")
    calls = {"call": lambda: hm(toks, attention_mask=mask),
             "capture": lambda: capture(hm.model, toks, ["blocks.0.resid_post"], tmp_path / "c", progress=False,
                                        inputs={"attention_mask": mask}),   # as interp capture --text --lines
             "run_with_cache": lambda: hm.run_with_cache(toks, attention_mask=mask),
             "run_with_hooks": lambda: hm.run_with_hooks(toks, hooks=[("blocks.0.rec.state", lambda x, n: x)],
                                                         attention_mask=mask),
             "block_outputs": lambda: hm.block_outputs(toks, attention_mask=mask)}
    for what, call in calls.items():
        with pytest.raises(HookError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"hf_{kind}: row 0 of attention_mask is padded on the left"), what
        assert msg.endswith("valid: right padding (pad(..., side='right')) or prompts of one length"), what
    for side in ("left", "right"):   # generation needs left padding, which these models do not take
        toks, mask = padded(_prompts(hm.model), side)
        with pytest.raises(HookError, match=f"^hf_{kind}: generation from padded prompts needs left padding.*"
                                            "valid: prompts of one length"):
            hm.generate(toks, 2, attention_mask=mask)
    hm.run_with_cache(toks[:1, :LENS[0]], attention_mask=torch.ones(1, LENS[0]))   # no padding: fine


@pytest.mark.parametrize("kind", list(MODELS))
def test_right_padding_equals_each_prompt_alone(kind):
    hm = hooks.wrap(model(kind))
    assert_padded_equals_each_alone(hm, _prompts(hm.model), "right", pads_zero=False)


def _ids(V, n, L, seed):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(2, V, (n, L), generator=g)
    corr = clean.clone()
    corr[:, 2] = (clean[:, 2] + 1) % (V - 2) + 2
    return clean.tolist(), corr.tolist(), torch.randint(2, V, (2, n), generator=g).tolist()


@pytest.mark.filterwarnings("ignore:patching. mean logit differences")
@pytest.mark.parametrize("kind", ["rwkv", "xlstm"])
def test_prompt_pairs_pad_on_the_right_and_sweep_as_each_group_alone(kind):
    m = model(kind)
    V = m.config.vocab_size
    (ca, xa, aa), (cb, xb, ab) = _ids(V, 2, 5, 0), _ids(V, 2, 8, 1)
    both = (ca + cb, xa + xb, aa[0] + ab[0], aa[1] + ab[1])
    with pytest.raises(InterpError, match=f"^hf_{kind}: pairs of different lengths padded on the left.*"
                                          r"valid: side='right' \(interp patch --pad-side right\) or pairs of one"):
        patching.prompt_pairs(m, *both, side="left")
    assert patching.prompt_pairs(m, ca, xa, *aa, side="left").attention_mask is None   # one length: no padding
    pairs = patching.prompt_pairs(m, *both)
    assert pairs.attention_mask[:, 0].all() and not pairs.attention_mask[:, -1].all()   # padded on the right
    kw = dict(sites=["resid_pre", "rec.state"], layers=[1], keep_all=True, progress=False, direction="denoise",
              n_boot=5)
    r = patching.sweep(m, pairs, **kw)
    alone = patching.sweep(m, patching.prompt_pairs(m, ca, xa, *aa), **kw)
    idx = r.pair_data["index"].get_indexer(alone.pair_data["index"])
    got, want = r.pair_data["ld"][idx][:, :2], alone.pair_data["ld"]
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
