"""Seeded synthetic sequence tasks (copy, reverse, sort) and a tiny vocabulary.

Token id 0 is padding everywhere.  Content tokens are ``1 .. vocab_size - 1``.
Every function takes an explicit ``rng`` so data sets are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

PAD = 0


class Vocab:
    """Bidirectional token <-> id map; id 0 is ``"<pad>"``."""

    def __init__(self, tokens: Sequence[str], pad: str = "<pad>") -> None:
        seen: dict[str, int] = {pad: 0}
        for tok in tokens:
            if tok not in seen:
                seen[tok] = len(seen)
        self.token_to_id = seen
        self.id_to_token = list(seen)

    def __len__(self) -> int:
        return len(self.id_to_token)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self.token_to_id[t] for t in tokens], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"token {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> list[str]:
        return [self.id_to_token[int(i)] for i in np.asarray(ids).reshape(-1)]


@dataclass
class SequenceTask:
    """A padded batch of ``(inputs, targets)`` integer sequences.

    ``inputs``, ``targets``: ``(N, T)`` int64, ``PAD`` after ``lengths[i]``;
    ``mask``: ``(N, T)`` True on real tokens.
    """
    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray
    vocab_size: int

    @property
    def mask(self) -> np.ndarray:
        return np.arange(self.inputs.shape[1])[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, index) -> "SequenceTask":
        return SequenceTask(self.inputs[index], self.targets[index], self.lengths[index], self.vocab_size)


def _random_sequences(rng, n, min_len, max_len, vocab_size):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (id 0 is padding), got {vocab_size}")
    lengths = rng.integers(min_len, max_len + 1, size=n)                 # (N,)
    tokens = rng.integers(1, vocab_size, size=(n, max_len))              # (N, T)
    mask = np.arange(max_len)[None, :] < lengths[:, None]                # (N, T)
    return np.where(mask, tokens, PAD), lengths, mask


def copy_task(rng, n: int, min_len: int, max_len: int, vocab_size: int) -> SequenceTask:
    """Targets equal inputs."""
    x, lengths, _ = _random_sequences(rng, n, min_len, max_len, vocab_size)
    return SequenceTask(x, x.copy(), lengths, vocab_size)


def reverse_task(rng, n: int, min_len: int, max_len: int, vocab_size: int) -> SequenceTask:
    """Targets are the inputs reversed within each sequence's own length."""
    x, lengths, mask = _random_sequences(rng, n, min_len, max_len, vocab_size)
    t = np.arange(max_len)[None, :]
    src = np.clip(lengths[:, None] - 1 - t, 0, max_len - 1)              # position read by output t
    y = np.where(mask, np.take_along_axis(x, src, axis=1), PAD)
    return SequenceTask(x, y, lengths, vocab_size)


def sort_task(rng, n: int, min_len: int, max_len: int, vocab_size: int) -> SequenceTask:
    """Targets are the inputs sorted ascending within each sequence's own length."""
    x, lengths, mask = _random_sequences(rng, n, min_len, max_len, vocab_size)
    big = np.where(mask, x, vocab_size)                                   # padding sorts last
    y = np.where(mask, np.sort(big, axis=1), PAD)
    return SequenceTask(x, y, lengths, vocab_size)


def iterate_minibatches(task: SequenceTask, batch_size: int, rng, shuffle: bool = True) -> Iterator[SequenceTask]:
    """Yield consecutive (optionally shuffled) mini-batches of ``task``."""
    order = rng.permutation(len(task)) if shuffle else np.arange(len(task))
    for start in range(0, len(task), batch_size):
        yield task.subset(order[start:start + batch_size])
