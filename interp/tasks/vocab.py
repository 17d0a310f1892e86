"""One word-level vocabulary shared by every task, so one model can train on a task mixture.
The word list is fixed and ordered (ids never depend on hashing or run order)."""
from __future__ import annotations

import itertools

SPECIALS = ["<pad>", "<bos>", "<eos>", "<sep>", "?", ";", "=", "+=", "swap", "is", "in", "move", "where",
            "has", "waves", "_"]
NUMBERS = [str(i) for i in range(64)]                  # values 0..63
KEYS = [f"k{i}" for i in range(64)]
VARS = [f"x{i}" for i in range(16)]
S3 = list(itertools.permutations(range(3)))
S5 = list(itertools.permutations(range(5)))
PERM3 = [f"p3_{''.join(map(str, p))}" for p in S3]
PERM5 = [f"p5_{''.join(map(str, p))}" for p in S5]
OBJECTS = [f"obj{i}" for i in range(16)]
BOXES = [f"box{i}" for i in range(16)]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
         "niaj", "olivia", "peggy", "rupert", "sybil"]
PRONOUNS = ["he", "she"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "orange",
          "purple", "gold", "silver", "teal", "navy", "olive"]
OPEN, CLOSE = ["(", "[", "{", "<"], [")", "]", "}", ">"]
SYMBOLS = [f"c{i}" for i in range(64)]

WORDS = (SPECIALS + NUMBERS + KEYS + VARS + PERM3 + PERM5 + OBJECTS + BOXES + NAMES + PRONOUNS + COLORS
         + OPEN + CLOSE + SYMBOLS)


class Vocab:
    def __init__(self, words=WORDS):
        self.words = list(words)
        self._ids = {w: i for i, w in enumerate(self.words)}
        assert len(self._ids) == len(self.words), "duplicate vocabulary words"

    def __len__(self):
        return len(self.words)

    def __contains__(self, w):
        return w in self._ids

    def id(self, w: str) -> int:
        try:
            return self._ids[w]
        except KeyError:
            raise KeyError(f"'{w}' is not in the task vocabulary") from None

    def encode(self, words) -> list[int]:
        return [self.id(w) for w in words]

    def decode(self, ids) -> list[str]:
        return [self.words[int(i)] for i in ids]


VOCAB = Vocab()
PAD = VOCAB.id("<pad>")
