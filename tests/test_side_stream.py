"""hooks.scan.side_stream off the GPU: a plain call, the switch, and run_with_cache unchanged by it."""
import pytest
import torch

from hooks.scan import side_stream


def test_beside_without_a_block_or_cuda_runs_in_place():
    x = torch.arange(4.0)
    assert side_stream.beside(lambda: x * 2, (x,), x.device).tolist() == [0, 2, 4, 6]
    with side_stream.side_streams():
        assert not side_stream.active(x.device)          # a CPU tensor never goes to a side stream
        assert side_stream.beside(lambda: x + 1, (x, None), x.device).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("value,expected", [("0", False), ("1", True), (None, True)])
def test_switch(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("HYBRID_INTERP_SIDE_STREAM", raising=False)
    else:
        monkeypatch.setenv("HYBRID_INTERP_SIDE_STREAM", value)
    assert side_stream.wanted() is expected


def test_block_state_is_reset_after_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError):
        with side_stream.side_streams():
            assert side_stream._ACTIVE.get() == {}
            raise RuntimeError("inside")
    assert side_stream._ACTIVE.get() is None
    with side_stream.side_streams(enabled=False):
        assert side_stream._ACTIVE.get() is None
