"""Auto-routing with a precision we can prove, and keep proving (issue 13): the statistics, as pure functions.

A ticket is dispatched without a person ("auto") when the serving version's top-1 probability reaches that
version's threshold; every other ticket goes to a person ("review"). Three decisions, each made from counts and
scores the store keeps, so the service calls them without state:

1. **The threshold** (`choose_threshold`, per department `choose_department_thresholds`), once per promoted
   version, from *calibration rows*: the version's top-1 probability and whether the top-1 was right, on gold labels
   it never trained on. The threshold is the lowest one at which the precision of tickets at or above it is at
   least the target with the promised confidence. Each candidate threshold t is a hypothesis test of
   "precision(t) < target" with the exact Clopper–Pearson (1934) binomial bound. Scanning many thresholds and
   keeping the lowest that passes would inflate the error rate (each one is another chance to pass by luck), so the
   candidates are tested in a fixed order, from high thresholds to low, and the scan stops at the first failure:
   fixed-sequence testing, which controls the family-wise error at 1 - confidence with no Bonferroni correction
   (Learn then Test: Angelopoulos, Bates, Candès, Jordan & Lei, 2021, arXiv:2110.01052; Bates et al., 2021,
   "Distribution-free, risk-controlling prediction sets", JACM). The candidates are fixed before any label is looked
   at: they depend on the scores only, never on which rows were right. Given the scores, whether each row is right
   is an independent trial, and the binomial bound stays valid for trials with unequal chances (Hoeffding, 1956), so
   the argument holds conditionally on the scores; the tests check it against the precision over all future tickets.
2. **Each ticket** (`AutoRouting.decide`): auto when the version is not stopped and the score reaches the threshold
   of the predicted department; `AutoRouting.audit_selected` then picks a random share of auto-routed tickets for
   a person to check, the same way for the same ticket every time (a hash, not a random draw).
3. **The audit** (`AutoRouting.audit`): from the audited answers of a version (how many, how many right), a
   confidence sequence for its realised precision (Robbins, 1970; Howard, Ramdas, McAuliffe & Sekhon, 2021, Ann.
   Statist.): valid at every moment at once, so the rule may be re-evaluated after every answer without the
   error growing. Auto-routing stops when the sequence shows the precision is below the target.

Everything is numpy on one score per row; scipy's incomplete beta function is imported on first use.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

GRID_RATIO = 1.25  # each candidate threshold admits at least 25 % more calibration rows than the one above it
DEFAULT_MIN_DEPARTMENT_ROWS = 100


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")


def min_rows(target: float, confidence: float) -> int:
    """The fewest calibration rows above a threshold with which it can pass at all (every one of them right):
    59 for a precision of 0.95 at 95 % confidence. Below it no threshold can be proven."""
    _check_level("target", target)
    _check_level("confidence", confidence)
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log(target)))
    while (1.0 - confidence) ** (1.0 / n) < target:  # the closed form can land one short in floating point
        n += 1
    return n


def clopper_pearson_lower(correct, rows, confidence: float) -> np.ndarray:
    """Exact one-sided lower confidence bound on a success rate from `correct` successes in `rows` trials."""
    from scipy.special import betaincinv

    k, n = np.broadcast_arrays(np.asarray(correct, dtype=float), np.asarray(rows, dtype=float))
    bound = np.zeros(k.shape)
    some = k > 0
    bound[some] = betaincinv(k[some], n[some] - k[some] + 1.0, 1.0 - confidence)
    return bound


@dataclass(frozen=True)
class Threshold:
    """The outcome of calibrating one group of tickets (all of them, or one predicted department)."""

    threshold: float | None  # auto-route when score >= threshold; None: no threshold can be proven, auto-routing off
    coverage: float  # share of the calibration rows at or above the threshold (0.0 when off)
    bound: float | None  # Clopper–Pearson lower bound on the precision at the threshold
    precision: float | None  # observed precision of the calibration rows at or above the threshold
    n: int  # calibration rows
    n_above: int  # calibration rows at or above the threshold
    target: float
    confidence: float

    @property
    def auto(self) -> bool:
        return self.threshold is not None

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(scores: Sequence[float], correct: Sequence[bool], target: float = 0.95, confidence: float = 0.95) -> Threshold:
    """The lowest threshold t such that, with probability at least `confidence` over the calibration rows, the
    precision of tickets scoring >= t is at least `target`.

    `scores` are the model's top-1 probabilities on calibration rows held out from its training, `correct` whether
    each top-1 was the gold department. Candidates are the distinct scores (a threshold between two scores admits
    the same rows as the higher one), thinned to a geometric grid of the number of rows they admit: the first admits
    `min_rows(target, confidence)`, each next one at least GRID_RATIO times as many, down to all rows. They are
    tested from high to low and the scan stops at the first whose Clopper–Pearson bound falls short of the target
    (fixed-sequence testing; see the module docstring). The grid comes from the scores alone, so it is fixed
    before the test looks at correctness; testing a thinned grid rather than every score leaves fewer chances for an
    unlucky row to end the scan (on synthetic problems and the dev sets, ratios 1.1 and 1.25 routed about as much,
    1.5 less).
    Ties: every row whose score equals the threshold is auto-routed."""
    _check_level("target", target)
    _check_level("confidence", confidence)
    s = np.asarray(scores, dtype=float).reshape(-1)
    c = np.asarray(correct).reshape(-1)
    if len(s) != len(c):
        raise ValueError(f"scores and correct must have the same length, got {len(s)} and {len(c)}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    if c.size and not np.isin(c, (0, 1)).all():
        raise ValueError("correct must hold booleans (or 0/1)")
    n = len(s)
    off = Threshold(threshold=None, coverage=0.0, bound=None, precision=None, n=n, n_above=0, target=target, confidence=confidence)
    first = min_rows(target, confidence)
    if n < first:
        return off
    order = np.argsort(-s, kind="stable")
    s, c = s[order], c[order].astype(float)
    group_ends = np.append(np.flatnonzero(s[1:] != s[:-1]), n - 1)  # last row of each run of equal scores
    admitted = group_ends + 1
    right = np.cumsum(c)[group_ends]
    candidates = _geometric_grid(admitted, first)
    bounds = clopper_pearson_lower(right[candidates], admitted[candidates], confidence)
    passed = bounds >= target
    if not passed[0]:
        return off
    pos = len(passed) - 1 if passed.all() else int(np.argmin(passed)) - 1  # the last candidate before the first failure
    last = candidates[pos]
    n_above = int(admitted[last])
    return Threshold(threshold=float(s[group_ends[last]]), coverage=n_above / n, bound=float(bounds[pos]),
                     precision=float(right[last] / n_above), n=n, n_above=n_above, target=target, confidence=confidence)


def _geometric_grid(admitted: np.ndarray, first: int) -> np.ndarray:
    """Indices into `admitted` (rows admitted per distinct score, ascending) whose counts grow by GRID_RATIO from
    `first`; the last index (every row) always closes the grid."""
    picks = []
    want = first
    while (j := int(np.searchsorted(admitted, want))) < len(admitted):
        picks.append(j)
        want = max(math.ceil(admitted[j] * GRID_RATIO), int(admitted[j]) + 1)
    if picks[-1] != len(admitted) - 1:
        picks.append(len(admitted) - 1)
    return np.asarray(picks)


@dataclass(frozen=True)
class DepartmentThresholds:
    """Thresholds of one model version: one per predicted department that had enough calibration rows (Mondrian:
    each proven on its own rows, so each such department's auto-routed tickets reach the target with the promised
    confidence), and one for the rest, proven on the pooled calibration rows of all the other departments."""

    by_department: dict[str, Threshold]
    rest: Threshold
    n: int  # calibration rows in all
    target: float
    confidence: float
    min_department_rows: int
    coverage: float = field(init=False)  # share of all calibration rows auto-routed under these thresholds

    def __post_init__(self):
        above = self.rest.n_above + sum(t.n_above for t in self.by_department.values())
        object.__setattr__(self, "coverage", above / self.n if self.n else 0.0)

    def threshold_for(self, department: str) -> float | None:
        group = self.by_department.get(department, self.rest)
        return group.threshold

    def to_dict(self) -> dict:
        return {"by_department": {d: t.to_dict() for d, t in self.by_department.items()}, "rest": self.rest.to_dict(), "n": self.n,
                "target": self.target, "confidence": self.confidence, "min_department_rows": self.min_department_rows, "coverage": self.coverage}

    @classmethod
    def from_dict(cls, data: Mapping) -> DepartmentThresholds:
        return cls(by_department={d: Threshold(**t) for d, t in data["by_department"].items()}, rest=Threshold(**data["rest"]), n=data["n"],
                   target=data["target"], confidence=data["confidence"], min_department_rows=data["min_department_rows"])


def choose_department_thresholds(scores: Sequence[float], correct: Sequence[bool], predicted: Sequence[str] | None = None,
                                 target: float = 0.95, confidence: float = 0.95,
                                 min_department_rows: int = DEFAULT_MIN_DEPARTMENT_ROWS) -> DepartmentThresholds:
    """Per-department thresholds (see `DepartmentThresholds`); `predicted` is each calibration row's top-1 department.

    A department predicted for at least `min_department_rows` calibration rows gets its own threshold; the others
    share one threshold proven on their pooled rows. Without `predicted`, or with `min_department_rows` 0, there is
    one global threshold (`rest`). Each threshold holds with the promised confidence on its own; the precision over
    all auto-routed tickets is at least the target whenever every group's holds, which for G groups is guaranteed
    only with confidence 1 - G * (1 - confidence) by the union bound (one group's miss need not pull the whole mix
    below the target)."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    c = np.asarray(correct).reshape(-1)
    if min_department_rows < 0:
        raise ValueError(f"min_department_rows must be >= 0, got {min_department_rows}")
    by_department: dict[str, Threshold] = {}
    rest = np.ones(len(s), dtype=bool)
    if predicted is not None and min_department_rows > 0:
        names = np.asarray(predicted, dtype=object).reshape(-1)
        if len(names) != len(s):
            raise ValueError(f"predicted must have one department per score, got {len(names)} for {len(s)} scores")
        departments, counts = np.unique(names.astype(str), return_counts=True)
        for department in departments[counts >= min_department_rows]:
            mine = names == department
            by_department[str(department)] = choose_threshold(s[mine], c[mine], target, confidence)
            rest &= ~mine
    return DepartmentThresholds(by_department=by_department, rest=choose_threshold(s[rest], c[rest], target, confidence), n=len(s),
                                target=target, confidence=confidence, min_department_rows=min_department_rows)


def precision_confidence_sequence(correct, audited, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bounds on a success rate from `correct` successes in `audited` trials, valid at every sample
    size at once; arrays broadcast (one call gives the bounds after each answer of a whole audit history).

    Robbins' beta-binomial mixture: for a candidate rate p, the uniform-prior mixture of binomial likelihoods over
    the likelihood at p is a nonnegative martingale when p is the true rate, so by Ville's inequality it ever
    exceeds 1/(1 - confidence) with probability at most 1 - confidence. The bounds are the rates where it does not.
    A fixed-sample bound re-checked after every new answer would not keep its promise."""
    from scipy.special import betaln, xlogy

    _check_level("confidence", confidence)
    k, n = np.broadcast_arrays(np.asarray(correct, dtype=float), np.asarray(audited, dtype=float))
    if not ((k >= 0) & (k <= n)).all():
        raise ValueError("need 0 <= correct <= audited")
    log_mixture = betaln(k + 1.0, n - k + 1.0)
    limit = -math.log(1.0 - confidence)

    def outside(p):
        with np.errstate(divide="ignore"):
            return log_mixture - xlogy(k, p) - xlogy(n - k, 1.0 - p) >= limit

    def bound(endpoint: float) -> np.ndarray:  # bisection between the estimate (always inside) and the endpoint
        inside, out = np.where(n > 0, k / np.maximum(n, 1.0), 0.5), np.full(k.shape, endpoint)
        for _ in range(50):
            mid = (inside + out) / 2
            beyond = outside(mid)
            out, inside = np.where(beyond, mid, out), np.where(beyond, inside, mid)
        return np.where(outside(np.full(k.shape, endpoint)), inside, endpoint)

    return bound(0.0), bound(1.0)


@dataclass(frozen=True)
class AuditDecision:
    stop: bool  # True: the audits show the version's precision is below the target; route everything to review
    audited: int
    correct: int
    precision: float | None  # observed share of audited tickets the model got right
    lower: float  # the realised precision is at least this, with the confidence (valid however often it is checked)
    upper: float  # ... and at most this; stop when it falls below the target
    target: float
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


AUTO, REVIEW = "auto", "review"  # the two decisions
AUDIT = "audit"  # not a decision: an auto-routed ticket that a person also checks
Decision = str  # AUTO | REVIEW


@dataclass(frozen=True)
class AutoRouting:
    """The centre's promise (precision `target` with `confidence`) and audit rate, and one method per decision."""

    target: float = 0.95
    confidence: float = 0.95
    audit_rate: float = 0.05
    min_department_rows: int = DEFAULT_MIN_DEPARTMENT_ROWS

    def __post_init__(self):
        _check_level("target", self.target)
        _check_level("confidence", self.confidence)
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError(f"audit_rate must be between 0 and 1, got {self.audit_rate!r}")

    def thresholds(self, scores: Sequence[float], correct: Sequence[bool], predicted: Sequence[str] | None = None) -> DepartmentThresholds:
        """Calibrate a version on held-out gold labels: its top-1 probability, whether it was right, its top-1."""
        return choose_department_thresholds(scores, correct, predicted, self.target, self.confidence, self.min_department_rows)

    def decide(self, department: str, score: float, thresholds: DepartmentThresholds | None, stopped: bool) -> Decision:
        """auto or review for one ticket. Thresholds proven for a weaker promise than the current one (the centre
        raised AUTO_ROUTE_PRECISION since) do not count: recalibrate the version from its calibration rows."""
        if stopped or thresholds is None or thresholds.target < self.target or thresholds.confidence < self.confidence:
            return REVIEW
        threshold = thresholds.threshold_for(department)
        return AUTO if threshold is not None and score >= threshold else REVIEW

    def audit_selected(self, ticket_id: str | int, version: str) -> bool:
        """Whether an auto-routed ticket also goes to a person for audit: a uniform draw at `audit_rate` that is
        the same every time the same ticket is routed by the same version (idempotent), and unrelated to its text
        or score, so the audited tickets are a fair sample of the auto-routed ones."""
        digest = hashlib.sha256(f"{version}\x00{ticket_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64 < self.audit_rate

    def audit(self, audited: int, correct: int) -> AuditDecision:
        """Stop or continue auto-routing with a version, from its audited tickets so far: `audited` answered by a
        person, `correct` of them where the person's department was the model's.

        Stops when the confidence sequence's upper bound on the realised precision falls below the target: the
        audits then show, with the promised confidence, that the version misses the promise. The chance of stopping
        a version that keeps it is at most 1 - confidence over its whole life, however often this is called. The
        lower bound is what the audits prove so far; a version that just meets the target needs thousands of audits
        before it exceeds the target, so it cannot be the stop rule. A stop is final for the version: persist it
        and route everything to review until a new version is promoted (later right answers can lift the upper
        bound again, but the promise has been shown broken once, and the guarantee above counts that moment)."""
        lower, upper = (float(b) for b in precision_confidence_sequence(correct, audited, self.confidence))
        return AuditDecision(stop=upper < self.target, audited=audited, correct=correct, precision=correct / audited if audited else None,
                             lower=lower, upper=upper, target=self.target, confidence=self.confidence)
