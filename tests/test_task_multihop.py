"""multihop: bindings are flat (any order), pairs change the queried chain's last link, and cot prompts run
closed loop (`interp.closedloop`) with the model's own intermediate symbols."""
import torch

from interp import tasks as T
from interp.closedloop import closed_loop

V = T.VOCAB


def test_bindings_come_in_any_order_and_chains_are_disjoint():
    b = T.generate("multihop", 64, seed=0, hops=3, n_chains=4)
    out_of_order = 0
    for i in range(64):
        w = b.words(i)
        stmts = [w[p:p + 3] for p in range(1, 1 + 4 * 12, 4)]
        srcs, dsts = [a for a, _, _ in stmts], [c for _, _, c in stmts]
        assert len(set(srcs)) == len(set(dsts)) == 12 and len(set(srcs) | set(dsts)) == 16   # 4 chains of 4 symbols
        link = dict(zip(srcs, dsts))
        q = w[-2]
        chain = [q] + [None] * 3
        for j in range(3):
            chain[j + 1] = link[chain[j]]
        assert w[-1] == chain[-1]
        order = [srcs.index(chain[j]) for j in range(3)]
        out_of_order += order != sorted(order)
    assert out_of_order > 32          # random order: 5 of 6 orders of the three queried links are not ascending


def test_pairs_point_the_last_link_elsewhere():
    p = T.make_pairs("multihop", 32, seed=3, hops=3, cot=True)
    for i in range(32):
        c, x = V.decode(p.clean[i]), V.decode(p.corrupted[i])
        d = [j for j in range(len(c)) if c[j] != x[j]]
        assert d == [int(p.diff_pos[i]), len(c) - 1]                 # one binding's target and the answer
        assert c[d[0] - 2] == c[len(c) - 4] and x[d[0]] not in c     # the last intermediate's link; an unused symbol
        assert V.words[int(p.corrupted_answer[i])] == x[d[0]]


class _Follower(torch.nn.Module):
    """At its input's last token (a marker or the final query) follows the input's bindings one link from the
    last symbol written (or the query), as a model that learned the task would; ``slip``: at the first marker
    it writes an unbound symbol instead."""

    def __init__(self, slip=False):
        super().__init__()
        self.slip, self.w = slip, torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.w.device

    def forward(self, tokens):
        out = torch.zeros(*tokens.shape, len(V))
        for i, row in enumerate(tokens.tolist()):
            w = V.decode(row)
            stop = w.index("?")
            link = {w[p]: w[p + 2] for p in range(1, stop, 4)}
            last = w[-2] if w[-1] == "is" else w[-3]         # the symbol before this marker / before "? q"
            src = w[stop + 1] if last == ";" else last       # none written yet: the query
            unbound = next(f"c{k}" for k in range(64) if f"c{k}" not in link and f"c{k}" not in link.values())
            nxt = unbound if self.slip and w[-1] == "is" and last == ";" else link.get(src, unbound)
            out[i, -1, V.id(nxt)] = 1.0
        return out


def test_cot_runs_closed_loop_on_the_models_own_symbols():
    b = T.generate("multihop", 8, seed=1, hops=4, n_chains=3, cot=True)
    assert closed_loop(_Follower(), b) == (1.0, 1.0)
    acc, chain = closed_loop(_Follower(slip=True), b)      # one wrong symbol derails the rest of the chain
    assert acc == 0.0 and chain == 0.0
