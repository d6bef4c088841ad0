"""The one interface every department model implements, and what the service derives from its output.

A classifier has one job: ticket texts in, a probability distribution over its departments out. The instant
model (learning/instant_model.py) and the LLM scorer (training/llm_scorer.py) both implement it, so the service,
the evaluation gate and the active-learning strategies never care which one is serving.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Distribution:
    """Row i is P(department | text i) over ``departments``; ``truncated[i]`` says the text was cut to fit."""

    probs: np.ndarray
    truncated: np.ndarray

    def __post_init__(self):
        if self.probs.ndim != 2 or len(self.truncated) != len(self.probs):
            raise ValueError("probs must be (n_texts, n_departments) with one truncated flag per text")


class Classifier(Protocol):
    version: str
    departments: tuple[str, ...]

    def predict_proba(self, texts: Sequence[str]) -> Distribution: ...


@dataclass(frozen=True)
class TicketPrediction:
    """One ticket's suggestion with the uncertainty measures active learning sorts on."""

    department: str
    score: float  # top-1 probability: what Label Studio sorts and samples on
    margin: float  # top-1 minus top-2
    entropy: float  # in nats
    top: list[tuple[str, float]]
    truncated: bool


def summarize(distribution: Distribution, departments: Sequence[str], k: int = 3) -> list[TicketPrediction]:
    probs = np.asarray(distribution.probs, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    out = []
    for i, row in enumerate(probs):
        ranked = order[i]
        p1 = float(row[ranked[0]])
        p2 = float(row[ranked[1]]) if len(ranked) > 1 else 0.0
        nonzero = row[row > 0]
        out.append(TicketPrediction(
            department=departments[ranked[0]],
            score=p1,
            margin=p1 - p2,
            entropy=float(-(nonzero * np.log(nonzero)).sum()),
            top=[(departments[j], float(row[j])) for j in ranked[:k]],
            truncated=bool(distribution.truncated[i]),
        ))
    return out
