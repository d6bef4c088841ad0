"""Auto-routing with a precision that can be proven: the threshold, its guarantee, and the audit that keeps it.

A centre sets a target precision (AUTO_ROUTE_PRECISION, e.g. 0.95) and a confidence (AUTO_ROUTE_CONFIDENCE, e.g.
0.95). For each model version, on gold labels the version never trained on, ``choose_threshold`` returns the lowest
score threshold t such that, with that confidence, the precision of tickets scoring >= t is at least the target:
candidate thresholds are tested from the highest down, each with the Clopper–Pearson lower bound on the precision of
the calibration rows above it, and the scan stops at the first that fails — a fixed-sequence test, so scanning many
thresholds spends no extra error (the Learn-then-Test argument of Angelopoulos et al., 2021). ``audit_verdict`` keeps
proving it once the version serves: from the people's answers on a random sample of auto-routed tickets, the lower
bound on the realised precision; below the target, auto-routing stops until another version is promoted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def precision_lower_bound(correct: int, n: int, confidence: float) -> float:
    """One-sided Clopper–Pearson lower confidence bound on a success probability, from `correct` of `n`."""
    if n == 0 or correct == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1 - confidence, correct, n - correct + 1))


@dataclass(frozen=True)
class Threshold:
    threshold: float | None  # None: no threshold meets the target with this confidence: route nothing
    coverage: float  # share of the calibration rows at or above it
    lower_bound: float  # the precision bound reached at it
    rows: int  # calibration rows
    target: float
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(scores: np.ndarray, correct: np.ndarray, target: float, confidence: float, min_rows: int = 1) -> Threshold:
    """The lowest threshold whose calibration rows above it prove precision >= target at this confidence."""
    scores, correct = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    n = len(scores)
    if n < min_rows or n == 0:
        return Threshold(None, 0.0, 0.0, n, target, confidence)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(correct[order])
    best = Threshold(None, 0.0, 0.0, n, target, confidence)
    # candidates: each distinct score, highest first; all rows tied at a score enter together
    last_of_score = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    for end in last_of_score:
        above = end + 1
        bound = precision_lower_bound(int(hits[end]), int(above), confidence)
        if bound < target:
            break
        best = Threshold(float(ranked[end]), above / n, bound, n, target, confidence)
    return best


def department_thresholds(scores: np.ndarray, correct: np.ndarray, predicted: list[str], target: float, confidence: float,
                          min_rows: int) -> dict[str, Threshold]:
    """One threshold per predicted department with at least `min_rows` calibration rows (Mondrian: the guarantee
    holds within each department); other departments use the global one."""
    scores, correct, predicted = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool), np.asarray(predicted)
    out = {}
    for department in sorted(set(predicted.tolist())):
        rows = predicted == department
        if rows.sum() >= min_rows:
            out[department] = choose_threshold(scores[rows], correct[rows], target, confidence)
    return out


def audit_verdict(audited: int, correct: int, target: float, confidence: float) -> tuple[bool, float]:
    """(stop, lower bound on the realised precision). Auto-routing stops when the audit proves the precision below
    the target at this confidence — when even the upper bound falls under it. (Stopping as soon as the lower bound
    dips under the target would stop a version that meets it: with a few dozen audits the lower bound of a 95 %
    precision is far below 95 %.)"""
    if audited == 0:
        return False, 1.0
    from scipy.stats import beta

    upper = 1.0 if correct == audited else float(beta.ppf(confidence, correct + 1, audited - correct))
    return upper < target, precision_lower_bound(correct, audited, confidence)
