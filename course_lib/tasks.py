"""Synthetic tasks with verifiable answers: seeded, generated on the spot, no downloads.

A task maps a source sequence of symbols to the one right target (reverse it, sort it, copy it), so a
model's answer can be checked exactly and its accuracy measured on held-out examples it never saw.
Chapter 3 trains an encoder-decoder Transformer on them; later chapters use the same tasks to make
instruction tuning, preference optimisation and evaluation measurable on a small model.

Token ids: ``PAD = 0``, ``BOS = 1`` (start of a target), ``EOS = 2`` (end of a target), then the
``n_symbols`` symbols ``3, 4, ...``; :attr:`SymbolTask.vocab_size` is ``3 + n_symbols``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3

RULES: dict[str, Callable[[list[int]], list[int]]] = {
    "copy": lambda s: list(s),
    "reverse": lambda s: s[::-1],
    "sort": sorted,
}


@dataclass(frozen=True)
class SymbolTask:
    """Sequences of ``min_len`` to ``max_len`` symbols drawn uniformly from ``n_symbols``, and the
    target that ``rule`` (``"copy"``, ``"reverse"`` or ``"sort"``) gives for each."""

    rule: str = "reverse"
    n_symbols: int = 10
    min_len: int = 4
    max_len: int = 10

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {sorted(RULES)}, got {self.rule!r}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}")
        if self.n_symbols < 2:
            raise ValueError(f"n_symbols must be >= 2, got {self.n_symbols}")

    @property
    def vocab_size(self) -> int:
        return FIRST_SYMBOL + self.n_symbols

    def target(self, source: Sequence[int]) -> list[int]:
        """The right answer for ``source``."""
        return RULES[self.rule](list(source))

    def examples(self, n: int, seed: int, exclude: set[tuple[int, ...]] = frozenset()) -> list[tuple[list[int], list[int]]]:
        """``n`` distinct ``(source, target)`` pairs, none of whose source is in ``exclude``; the same
        ``seed`` gives the same pairs on every machine (Python's ``random``, not torch's)."""
        space = sum(self.n_symbols ** k for k in range(self.min_len, self.max_len + 1))
        if n > space - len(exclude):
            raise ValueError(f"asked for {n} distinct examples, the task has only {space - len(exclude)} left")
        rng = random.Random(seed)
        seen, pairs = set(exclude), []
        while len(pairs) < n:
            length = rng.randint(self.min_len, self.max_len)
            source = tuple(rng.randrange(FIRST_SYMBOL, self.vocab_size) for _ in range(length))
            if source in seen:
                continue
            seen.add(source)
            pairs.append((list(source), self.target(source)))
        return pairs

    def split(self, n_train: int, n_test: int, seed: int = 0) -> tuple[list, list]:
        """A training set and a held-out test set whose sources never occur in the training set."""
        train = self.examples(n_train, seed)
        test = self.examples(n_test, seed + 1, exclude={tuple(s) for s, _ in train})
        return train, test


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = PAD, left: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``, both ``(batch, longest)`` int64: the sequences padded with ``pad_id``
    on the right (or the left), and 1 for tokens, 0 for padding."""
    if not sequences:
        raise ValueError("sequences is empty")
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(longest - len(seq), longest) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def seq2seq_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Tensors for teacher forcing on ``(source, target)`` pairs, all ``(batch, len)`` int64:
    ``src``/``src_mask``; ``tgt_in`` (``BOS`` + target) and ``tgt_mask``; ``labels`` (target +
    ``EOS``, ``-100`` on padding, which ``F.cross_entropy`` ignores). Position ``t`` of ``tgt_in``
    predicts position ``t`` of ``labels``."""
    src, src_mask = pad_batch([s for s, _ in pairs])
    tgt_in, tgt_mask = pad_batch([[BOS, *t] for _, t in pairs])
    labels, _ = pad_batch([[*t, EOS] for _, t in pairs])
    return {"src": src, "src_mask": src_mask, "tgt_in": tgt_in, "tgt_mask": tgt_mask,
            "labels": labels.masked_fill(tgt_mask == 0, -100)}
