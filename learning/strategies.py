"""Query strategies: which unlabelled tickets annotators should label next.

Every strategy ranks the rows of a probability matrix (tickets x departments, as a ``Classifier`` returns it) and
answers row indices, most informative first. Ties go to the lower index, so a ranking is reproducible; only
``Random`` draws from the generator it is given.

``LeastConfidence`` is what Label Studio already does for us: its uncertainty sampling sorts tasks on the
prediction score, which is our top-1 probability. The others need the whole distribution. ``RandomThenMargin`` is
the service's queue order (``DEFAULT``); it also needs the number of gold labels the model was fitted on.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class QueryStrategy(Protocol):
    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray: ...


def _ascending(values: np.ndarray) -> np.ndarray:
    return np.argsort(values, kind="stable")


class LeastConfidence:
    """Lowest top-1 probability first."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray:
        return _ascending(probs.max(axis=1))


class Margin:
    """Smallest gap between the two most likely departments first: the model hesitates between two units."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray:
        if probs.shape[1] < 2:  # one department: every ticket is equally (un)informative
            return np.arange(len(probs))
        top_two = np.sort(probs, axis=1)[:, -2:]
        return _ascending(top_two[:, 1] - top_two[:, 0])


class Entropy:
    """Highest entropy first: probability spread over many departments."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray:
        # log(1) = 0 makes zero probabilities contribute nothing, without a log(0) warning
        entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=1)
        return _ascending(-entropy)


class Random:
    """The baseline every other strategy has to beat: labelling tickets in no particular order."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray:
        return (rng or np.random.default_rng()).permutation(len(probs))


class ClassBalanced:
    """The base strategy's ranking dealt out round-robin over the predicted departments, rarer ones first.

    On a long tail of small departments a plain uncertainty ranking is dominated by the few large units the
    model confuses with each other; the small ones never get a label and are never learnt. Here each round takes
    the next-best candidate of every predicted department, so a batch covers as many departments as it can."""

    def __init__(self, base: QueryStrategy):
        self.base = base

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray:
        order = self.base.rank(probs, rng, labelled)
        predicted = probs.argmax(axis=1)[order]
        seat_in_round = np.argsort(np.argsort(np.bincount(predicted, minlength=probs.shape[1]), kind="stable"), kind="stable")
        round_number = np.empty(len(order), dtype=int)
        taken = np.zeros(probs.shape[1], dtype=int)
        for position, department in enumerate(predicted):
            round_number[position] = taken[department]
            taken[department] += 1
        return order[np.lexsort((seat_in_round[predicted], round_number))]


# When margin sampling starts to pay: fitted by eye on the dev sets' replays (bench/learning.py, BENCHMARKS section 9),
# where margin trailed random order up to ~450 labels on Shanghai k = 20 (57 units, 8 a unit) and ~250 on TipDM (7).
MATURE_LABELS_PER_DEPARTMENT = 8
MATURE_MIN_LABELS = 300


def mature(labelled: int, departments: int) -> bool:
    """Whether a model fitted on `labelled` gold labels over `departments` units knows enough for its doubts to mean
    something."""
    return labelled >= max(MATURE_MIN_LABELS, MATURE_LABELS_PER_DEPARTMENT * departments)


class RandomThenMargin:
    """Random order while the model is young, margin sampling once it is ``mature``.

    At small budgets uncertainty sampling loses to random order, at large ones it wins (Hacohen, Dekel & Weinshall
    2022, "Active learning on a budget: opposite strategies suit high and low budgets"): a model fitted on a few
    labels per department is confidently wrong, and its smallest margins point at tickets its errors make look
    hard. Until maturity this draws exactly what ``Random`` draws from the same generator, so it cannot trail it
    there; the paper's typicality picks (TypiClust) would be the next step for that early phase."""

    def rank(self, probs: np.ndarray, rng: np.random.Generator | None = None, labelled: int = 0) -> np.ndarray:
        if mature(labelled, probs.shape[1]):
            return Margin().rank(probs, rng, labelled)
        return Random().rank(probs, rng, labelled)


UNCERTAINTY = {"least-confidence": LeastConfidence, "margin": Margin, "entropy": Entropy}


def _balanced(base: Callable[[], QueryStrategy]) -> Callable[[], ClassBalanced]:
    return lambda: ClassBalanced(base())


STRATEGIES: dict[str, Callable[[], QueryStrategy]] = {
    "random": Random,
    **UNCERTAINTY,
    **{f"balanced-{name}": _balanced(base) for name, base in UNCERTAINTY.items()},
    "random-then-margin": RandomThenMargin,
}
DEFAULT = "random-then-margin"  # the order the service gives Label Studio's queue (backend/annotator_view.py)


def strategy(name: str) -> QueryStrategy:
    """The strategy called `name` on the command line."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown query strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
