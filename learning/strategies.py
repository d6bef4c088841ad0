"""Query strategies: which unlabelled tickets annotators should label next.

Every strategy ranks the rows of a probability matrix (tickets x departments, as a ``Classifier`` returns it) and
answers row indices, most informative first. Ties go to the lower index, so a ranking is reproducible; only
``Random`` draws from the generator it is given.

``LeastConfidence`` is what Label Studio already does for us: its uncertainty sampling sorts tasks on the
prediction score, which is our top-1 probability. The others need the whole distribution.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class QueryStrategy(Protocol):
    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray: ...


def _ascending(values: np.ndarray) -> np.ndarray:
    return np.argsort(values, kind="stable")


class LeastConfidence:
    """Lowest top-1 probability first."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return _ascending(probs.max(axis=1))


class Margin:
    """Smallest gap between the two most likely departments first: the model hesitates between two units."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if probs.shape[1] < 2:  # one department: every ticket is equally (un)informative
            return np.arange(len(probs))
        top_two = np.sort(probs, axis=1)[:, -2:]
        return _ascending(top_two[:, 1] - top_two[:, 0])


class Entropy:
    """Highest entropy first: probability spread over many departments."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        # log(1) = 0 makes zero probabilities contribute nothing, without a log(0) warning
        entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
        return _ascending(-entropy)


class Random:
    """The baseline every other strategy has to beat: labelling tickets in no particular order."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return (rng or np.random.default_rng()).permutation(len(probs))


class ClassBalanced:
    """The base strategy's ranking dealt out round-robin over the predicted departments, rarer ones first.

    On a long tail of small departments a plain uncertainty ranking is dominated by the few large units the
    model confuses with each other; the small ones never get a label and are never learnt. Here each round takes
    the next-best candidate of every predicted department, so a batch covers as many departments as it can."""

    def __init__(self, base: QueryStrategy):
        self.base = base

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        order = self.base.rank(probs, rng)
        predicted = probs.argmax(axis=1)[order]
        seat_in_round = np.argsort(np.argsort(np.bincount(predicted, minlength=probs.shape[1]), kind="stable"), kind="stable")
        round_number = np.empty(len(order), dtype=int)
        taken = np.zeros(probs.shape[1], dtype=int)
        for position, department in enumerate(predicted):
            round_number[position] = taken[department]
            taken[department] += 1
        return order[np.lexsort((seat_in_round[predicted], round_number))]


UNCERTAINTY = {"least-confidence": LeastConfidence, "margin": Margin, "entropy": Entropy}


def _balanced(base: Callable[[], QueryStrategy]) -> Callable[[], ClassBalanced]:
    return lambda: ClassBalanced(base())


STRATEGIES: dict[str, Callable[[], QueryStrategy]] = {
    "random": Random,
    **UNCERTAINTY,
    **{f"balanced-{name}": _balanced(base) for name, base in UNCERTAINTY.items()},
}


def strategy(name: str) -> QueryStrategy:
    """The strategy called `name` on the command line."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown query strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
