"""Auto-routing keeps its promise: the precision of auto-routed tickets reaches the target in at least the promised
share of calibration draws, and the audit stops a version that breaks the promise, rarely one that keeps it.

The validity tests draw calibration sets from synthetic problems whose precision above any threshold is known in
closed form (scores ~ Beta(a, b), P(right | score s) = s^power), so the realised precision of a chosen threshold
is that of an infinitely large test part: no test-set noise blurs the check. The number of draws (1,000) makes the
Monte Carlo allowance (three standard errors, 2.1 points at 95 %) small next to what an invalid method loses: the
naive scan (keep the lowest threshold whose own bound passes) is run on the same draws as a control.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import betainc, betaln

from core.routing import (
    AutoRouting,
    DepartmentThresholds,
    choose_department_thresholds,
    choose_threshold,
    clopper_pearson_lower,
    min_rows,
    precision_confidence_sequence,
)

TARGET, CONFIDENCE = 0.95, 0.95
DRAWS, CALIBRATION_ROWS = 1000, 1000
ALLOWANCE = 3 * np.sqrt((1 - CONFIDENCE) * CONFIDENCE / DRAWS)


class Problem:
    """Scores ~ Beta(a, b); a ticket with score s is routed right with probability s**power (1: calibrated,
    2: overconfident) or with a constant probability `flat` whatever its score."""

    def __init__(self, a: float, b: float, power: float = 1.0, flat: float | None = None):
        self.a, self.b, self.power, self.flat = a, b, power, flat

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = rng.beta(self.a, self.b, n)
        p_right = np.full(n, self.flat) if self.flat is not None else scores**self.power
        return scores, rng.random(n) < p_right

    def precision(self, threshold: float) -> float:
        """Precision over all tickets scoring >= threshold: E[s^power | s >= t] for s ~ Beta(a, b)."""
        if self.flat is not None:
            return self.flat
        tail = 1 - betainc(self.a, self.b, threshold)
        moment = np.exp(betaln(self.a + self.power, self.b) - betaln(self.a, self.b)) * (1 - betainc(self.a + self.power, self.b, threshold))
        return float(moment / tail)

    def coverage(self, threshold: float) -> float:
        return float(1 - betainc(self.a, self.b, threshold))


CALIBRATED = Problem(6.0, 1.2)
OVERCONFIDENT = Problem(6.0, 1.2, power=2.0)
STRONG = Problem(20.0, 1.0)  # a model that is right 95 % of the time on average, and knows when
JUST_BELOW_TARGET = Problem(2.0, 2.0, flat=0.945)  # no threshold is good enough: anything auto-routed breaks the promise


def naive_scan(scores, correct) -> float | None:
    """The lowest threshold whose own Clopper–Pearson bound passes, every distinct score tried: no multiple-testing
    control. Only here to show the validity test can fail."""
    order = np.argsort(-np.asarray(scores))
    admitted = np.arange(1, len(order) + 1)
    passed = np.flatnonzero(clopper_pearson_lower(np.cumsum(np.asarray(correct)[order]), admitted, CONFIDENCE) >= TARGET)
    return float(np.asarray(scores)[order][passed[-1]]) if len(passed) else None


def miss_rate(problem: Problem, choose, seed: int = 0) -> tuple[float, float]:
    """(share of calibration draws whose threshold misses the target, mean share of tickets auto-routed)."""
    rng = np.random.default_rng(seed)
    misses, coverage = 0, 0.0
    for _ in range(DRAWS):
        threshold = choose(*problem.draw(rng, CALIBRATION_ROWS))
        if threshold is not None:
            misses += problem.precision(threshold) < TARGET
            coverage += problem.coverage(threshold)
    return misses / DRAWS, coverage / DRAWS


def ours(scores, correct):
    return choose_threshold(scores, correct, TARGET, CONFIDENCE).threshold


@pytest.mark.parametrize("problem", [CALIBRATED, OVERCONFIDENT, STRONG, JUST_BELOW_TARGET],
                         ids=["calibrated", "overconfident", "strong", "just-below-target"])
def test_auto_routed_precision_reaches_the_target_in_the_promised_share_of_calibration_draws(problem):
    missed, _ = miss_rate(problem, ours)
    assert missed <= (1 - CONFIDENCE) + ALLOWANCE, f"precision below {TARGET} in {missed:.1%} of draws, promised at most {1 - CONFIDENCE:.0%}"


def test_the_naive_scan_over_thresholds_breaks_the_promise_so_the_validity_test_can_fail():
    missed, _ = miss_rate(JUST_BELOW_TARGET, naive_scan)
    assert missed > (1 - CONFIDENCE) + ALLOWANCE


def test_a_strong_calibrated_model_gets_most_tickets_auto_routed():
    oracle = next(t for t in np.linspace(0, 1, 10_001) if STRONG.precision(t) >= TARGET)  # the best threshold, knowing the truth
    _, coverage = miss_rate(STRONG, ours, seed=1)
    assert STRONG.coverage(oracle) == 1.0 and coverage >= 0.6


def test_no_rows_or_too_few_rows_turn_auto_routing_off():
    empty = choose_threshold([], [])
    assert (empty.threshold, empty.coverage, empty.n, empty.auto) == (None, 0.0, 0, False)
    few = min_rows(TARGET, CONFIDENCE)
    assert few == 59  # 0.95 ** 59 < 0.05 <= 0.95 ** 58
    assert choose_threshold(np.linspace(0.9, 1.0, few - 1), np.ones(few - 1, bool)).threshold is None
    assert choose_threshold(np.linspace(0.9, 1.0, few), np.ones(few, bool)).threshold == pytest.approx(0.9)


def test_all_wrong_routes_nothing_and_all_right_routes_everything():
    scores = np.random.default_rng(2).random(500)
    assert choose_threshold(scores, np.zeros(500, bool)).threshold is None
    everything = choose_threshold(scores, np.ones(500, bool))
    assert everything.threshold == scores.min()
    assert (everything.coverage, everything.n_above, everything.precision) == (1.0, 500, 1.0)
    assert everything.bound == pytest.approx(0.05 ** (1 / 500))


def test_tied_scores_are_routed_together():
    # 200 tickets at 0.99 (all right) above 400 tied at 0.6 (half right): a threshold can admit all of a tie or none of it
    scores = np.r_[np.full(200, 0.99), np.full(400, 0.6)]
    correct = np.r_[np.ones(200, bool), np.arange(400) % 2 == 0]
    result = choose_threshold(scores, correct)
    assert (result.threshold, result.n_above, result.coverage) == (0.99, 200, 200 / 600)
    one_tie = choose_threshold(np.full(300, 0.7), np.ones(300, bool))
    assert (one_tie.threshold, one_tie.n_above) == (0.7, 300)


def test_bad_input_is_refused_with_a_message_that_says_what_is_wrong():
    with pytest.raises(ValueError, match="same length"):
        choose_threshold([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="finite"):
        choose_threshold([0.5, float("nan")], [True, False])
    with pytest.raises(ValueError, match="target"):
        choose_threshold([0.5], [True], target=1.0)
    with pytest.raises(ValueError, match="booleans"):
        choose_threshold([0.5], [2])
    with pytest.raises(ValueError, match="audited"):
        AutoRouting().audit(audited=3, correct=4)


def test_per_department_thresholds_keep_a_weak_department_from_riding_on_a_strong_one():
    rng = np.random.default_rng(3)
    scores = np.r_[rng.uniform(0.8, 1.0, 1000), rng.uniform(0.8, 0.95, 190)]
    correct = np.r_[rng.random(1000) < 0.998, rng.random(150) < 0.8, np.ones(40, bool)]
    predicted = ["roads"] * 1000 + ["schools"] * 150 + ["parks"] * 40
    pooled = choose_threshold(scores, correct)
    assert pooled.threshold < 0.9  # one threshold for all auto-routes most "schools" tickets, 80 % of them right
    result = choose_department_thresholds(scores, correct, predicted, min_department_rows=100)
    assert set(result.by_department) == {"roads", "schools"}
    assert result.threshold_for("roads") is not None
    assert result.threshold_for("schools") is None
    assert result.threshold_for("parks") is None  # its 40 rows, pooled as "the rest", cannot prove 0.95
    assert result.rest.n == 40
    assert result.coverage == pytest.approx(result.by_department["roads"].n_above / len(scores))
    assert DepartmentThresholds.from_dict(result.to_dict()) == result
    one = choose_department_thresholds(scores, correct)  # no departments given: one global threshold
    assert one.by_department == {} and one.rest == pooled


def test_decide_routes_at_or_above_the_threshold_unless_stopped_or_proven_for_a_weaker_promise():
    rules = AutoRouting(target=0.95)
    scores = np.r_[np.full(100, 0.9), np.full(100, 0.5)]
    thresholds = rules.thresholds(scores, np.r_[np.ones(100, bool), np.zeros(100, bool)])
    assert thresholds.threshold_for("roads") == 0.9
    assert rules.decide("roads", 0.9, thresholds, stopped=False) == "auto"
    assert rules.decide("roads", 0.89, thresholds, stopped=False) == "review"
    assert rules.decide("roads", 0.99, thresholds, stopped=True) == "review"
    assert rules.decide("roads", 0.99, None, stopped=False) == "review"
    assert AutoRouting(target=0.97).decide("roads", 0.99, thresholds, stopped=False) == "review"


def test_audit_sample_is_the_promised_share_and_the_same_for_the_same_ticket():
    rules = AutoRouting(audit_rate=0.1)
    picked = [rules.audit_selected(ticket, "lora-3") for ticket in range(20_000)]
    assert abs(np.mean(picked) - 0.1) < 3 * np.sqrt(0.1 * 0.9 / 20_000)
    assert picked == [rules.audit_selected(ticket, "lora-3") for ticket in range(20_000)]
    other_version = [rules.audit_selected(ticket, "lora-4") for ticket in range(20_000)]
    assert np.mean(np.array(picked) & np.array(other_version)) == pytest.approx(0.01, abs=0.003)  # independent draws
    assert not any(AutoRouting(audit_rate=0.0).audit_selected(t, "v") for t in range(1000))
    assert all(AutoRouting(audit_rate=1.0).audit_selected(t, "v") for t in range(1000))


def audit_histories(true_precision: float, sequences: int, answers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(right answers so far, answers so far) after each answer of simulated audit histories."""
    right = np.random.default_rng(seed).random((sequences, answers)) < true_precision
    return np.cumsum(right, axis=1), np.arange(1, answers + 1)


def first_stop(upper: np.ndarray) -> np.ndarray:
    """After how many answers the upper bound first fell below the target (0: never): checked after every answer."""
    stopped = upper < TARGET
    return np.where(stopped.any(axis=1), stopped.argmax(axis=1) + 1, 0)


def test_audit_rarely_stops_a_version_that_keeps_the_promise_however_often_it_is_checked():
    sequences = 400
    allowance = 3 * np.sqrt((1 - CONFIDENCE) * CONFIDENCE / sequences)
    right, answers = audit_histories(TARGET, sequences, answers=1500, seed=4)  # exactly at the target: the hardest honest version
    _, upper = precision_confidence_sequence(right, answers, CONFIDENCE)
    assert np.mean(first_stop(upper) > 0) <= (1 - CONFIDENCE) + allowance
    # the control: the exact fixed-sample bound, re-checked after every answer, stops far more honest versions
    fixed_sample_upper = 1 - clopper_pearson_lower(answers - right, answers, CONFIDENCE)
    assert np.mean(first_stop(fixed_sample_upper) > 0) > (1 - CONFIDENCE) + allowance


def test_audit_stops_a_version_whose_precision_dropped():
    _, upper = precision_confidence_sequence(*audit_histories(0.85, sequences=200, answers=1000, seed=5), CONFIDENCE)
    first_stop_at = first_stop(upper)
    assert (first_stop_at > 0).all()
    assert np.median(first_stop_at) <= 100
    assert AutoRouting().audit(audited=30, correct=20).stop  # e.g. ten wrong answers among the first thirty
    assert not AutoRouting().audit(audited=30, correct=29).stop
    fresh = AutoRouting().audit(audited=0, correct=0)
    assert (fresh.stop, fresh.lower, fresh.upper, fresh.precision) == (False, 0.0, 1.0, None)


def test_the_bounds_agree_with_the_matching_fixed_sample_bounds_in_the_right_direction():
    # a bound valid at every sample size at once is wider than the exact bound for one fixed sample size
    lower, upper = precision_confidence_sequence(900, 1000, CONFIDENCE)
    assert lower < clopper_pearson_lower(900, 1000, CONFIDENCE) < 0.9 < upper
    assert lower > 0.85 and upper < 0.95
