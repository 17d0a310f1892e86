"""Synthetic tasks for the reasoning primitives (recall, state tracking, ...).

Every task is seeded and deterministic, shares one word-level vocabulary (`VOCAB`), returns
per-token ground-truth labels (`TaskBatch.labels`) and makes clean/corrupted prompt pairs that
differ in one controlled fact (`make_pairs`). Batches or pairs of different lengths join into one padded batch
with an attention mask (`pad_batches`, `pad_pairs`, `pairs_from_ids`; `interp.tasks.padded`)."""
from interp.tasks.base import (Knob, PairBatch, TaskBatch, TaskError, TASKS, difficulty_grid, generate, knobs,
                               make_pairs, spec_knobs)
from interp.tasks.padded import pad_batches, pad_pairs, pairs_from_ids
from interp.tasks.vocab import VOCAB
from interp.tasks import mqar, state_recall, permutation, entity_tracking, pronoun, brackets, copy, word_problems, parity, multihop  # noqa: F401,E402,E501

__all__ = ["TASKS", "VOCAB", "TaskBatch", "PairBatch", "TaskError", "Knob", "generate", "make_pairs", "knobs",
           "difficulty_grid", "pad_batches", "pad_pairs", "pairs_from_ids", "spec_knobs"]
