"""Query strategies put the tickets worth labelling first, deterministically, and share out the long tail."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from learning.strategies import (
    DEFAULT,
    MATURE_LABELS_PER_DEPARTMENT,
    MATURE_MIN_LABELS,
    STRATEGIES,
    ClassBalanced,
    CoverThenMargin,
    Entropy,
    LeastConfidence,
    Margin,
    Pool,
    Random,
    RandomThenMargin,
    TypicalThenMargin,
    cover_order,
    strategy,
    typical_order,
)

SURE = [0.9, 0.05, 0.05]
SPREAD = [0.4, 0.35, 0.25]
TORN_BETWEEN_TWO = [0.5, 0.5, 0.0]
UNIFORM = [1 / 3, 1 / 3, 1 / 3]
PROBS = np.array([SURE, SPREAD, TORN_BETWEEN_TWO, UNIFORM])


def test_least_confidence_puts_the_lowest_top_probability_first():
    assert LeastConfidence().rank(PROBS).tolist() == [3, 1, 2, 0]


def test_margin_puts_the_closest_two_departments_first_and_breaks_ties_by_row():
    # rows 2 and 3 both have a zero margin: the lower index comes first
    assert Margin().rank(PROBS).tolist() == [2, 3, 1, 0]


def test_entropy_puts_the_most_spread_distribution_first():
    assert Entropy().rank(PROBS).tolist() == [3, 1, 2, 0]


def test_uncertainty_rankings_are_unchanged_by_a_generator():
    for make in (LeastConfidence, Margin, Entropy):
        assert make().rank(PROBS, np.random.default_rng(5)).tolist() == make().rank(PROBS).tolist()


def test_random_is_a_permutation_reproducible_for_a_seed():
    probs = np.full((50, 3), 1 / 3)
    first = Random().rank(probs, np.random.default_rng(7))
    assert sorted(first.tolist()) == list(range(50))
    assert first.tolist() == Random().rank(probs, np.random.default_rng(7)).tolist()
    assert first.tolist() != Random().rank(probs, np.random.default_rng(8)).tolist()


def test_class_balanced_gives_every_predicted_department_a_ticket_per_round_rarest_first():
    probs = np.array([
        [0.50, 0.45, 0.05],  # 0  department 0, very uncertain
        [0.52, 0.43, 0.05],  # 1  department 0
        [0.55, 0.40, 0.05],  # 2  department 0
        [0.60, 0.35, 0.05],  # 3  department 0
        [0.20, 0.70, 0.10],  # 4  department 1
        [0.10, 0.85, 0.05],  # 5  department 1
        [0.02, 0.03, 0.95],  # 6  department 2: the one rare, confident ticket
    ])
    plain = Margin().rank(probs).tolist()
    assert plain[:4] == [0, 1, 2, 3]  # margin alone spends a batch of four on department 0
    balanced = ClassBalanced(Margin()).rank(probs).tolist()
    assert balanced == [6, 4, 0, 5, 1, 2, 3]
    assert sorted(balanced) == list(range(7))


def test_every_listed_strategy_ranks_every_row_once():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=40)
    for name in STRATEGIES:
        ranked = strategy(name).rank(probs, np.random.default_rng(1))
        assert sorted(ranked.tolist()) == list(range(40)), name


def test_balanced_variants_exist_for_each_uncertainty_measure():
    assert isinstance(strategy("balanced-margin"), ClassBalanced)
    assert {"random", "least-confidence", "margin", "entropy", "balanced-least-confidence", "balanced-margin",
            "balanced-entropy"} <= set(STRATEGIES)


def test_an_unknown_name_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="choose one of: .*least-confidence.*balanced-margin"):
        strategy("uncertainty")


def test_typical_order_starts_with_the_most_typical_ticket_of_the_largest_region_no_label_covers():
    """TypiClust (Hacohen et al. 2022): street lights are covered by a label, so the first pick is a noise complaint
    (the larger uncovered region, over water), the most typical one, not the odd one out."""
    lights = [f"小区路灯坏了第{i}盏不亮" for i in range(12)]
    noise = [f"夜里施工噪音扰民第{i}次" for i in range(8)] + ["夜里施工噪音扰民还有垃圾乱堆臭味很大第9次"]
    water = [f"停水三天没有自来水第{i}户" for i in range(4)]
    unlabelled = lights[1:] + noise + water
    order = typical_order(Pool(unlabelled, [lights[0]]), clusters=3)
    assert sorted(order.tolist()) == list(range(len(unlabelled)))
    assert unlabelled[order[0]] in noise[:8] and unlabelled[order[1]] in water  # each region's best, largest first
    assert unlabelled[order[2]] in lights  # then the covered region's best: every cluster has one label
    assert order.tolist() == typical_order(Pool(unlabelled, [lights[0]]), clusters=3).tolist()  # reproducible


_TICKET_IDS = itertools.count(0x5000)


def topic(complaint: str, count: int) -> list[str]:
    """`count` tickets of one complaint, told apart by two characters no other ticket has (ids, not topics)."""
    return [f"{complaint}{chr(i)}{chr(i + 0x1000)}" for i in itertools.islice(_TICKET_IDS, count)]


def test_cover_order_first_covers_the_largest_region_no_label_covers_then_the_next():
    """ProbCover (Yehuda et al. 2022): street lights are covered by a label, so the first pick's ball holds the noise
    complaints (the largest uncovered region), the second the water cuts; no pick is spent on the covered lights
    until every region has one."""
    lights, noise, water = topic("小区路灯坏了晚上一片漆黑", 12), topic("夜里工地施工噪音扰民", 8), topic("停水三天没有自来水用", 4)
    unlabelled = lights[1:] + noise + water
    order = cover_order(Pool(unlabelled, [lights[0]]), departments=3)
    assert sorted(order.tolist()) == list(range(len(unlabelled)))
    assert unlabelled[order[0]] in noise and unlabelled[order[1]] in water
    assert order.tolist() == cover_order(Pool(unlabelled, [lights[0]]), departments=3).tolist()  # reproducible
    assert order.tolist() != cover_order(Pool(unlabelled, [lights[0]]), departments=3, seed=1).tolist()  # the rest is seeded


def test_cover_order_breaks_ties_at_random_not_in_the_order_of_the_file():
    """An export grouped by department makes its first department's tickets the lowest indices; where covering has no
    preference (regions of one size) the pick must not fall to them every time (BENCHMARKS section 9, sixth pass)."""
    texts = topic("小区路灯坏了晚上一片漆黑", 6) + topic("夜里工地施工噪音扰民", 6) + topic("停水三天没有自来水用", 6)
    firsts = {texts[cover_order(Pool(texts, []), departments=3, seed=seed)[0]][:4] for seed in range(8)}
    assert firsts == {"小区路灯", "夜里工地", "停水三天"}


def test_cover_order_of_a_pool_beyond_its_sample_still_orders_every_ticket(monkeypatch):
    """A young queue of 10^5 tickets is covered on a seeded sample, the rest after it."""
    monkeypatch.setattr("learning.strategies.COVER_POOL", 20)
    texts = topic("小区路灯坏了晚上一片漆黑", 30) + topic("夜里工地施工噪音扰民", 30) + topic("停水三天没有自来水用", 30)
    pool = Pool(texts, topic("小区路灯坏了晚上一片漆黑", 25))  # more labels than the sample: lights are covered
    order = cover_order(pool, departments=3, seed=4)
    assert sorted(order.tolist()) == list(range(90))
    assert order.tolist() == cover_order(pool, departments=3, seed=4).tolist()
    assert {texts[i][:4] for i in order[:2]} == {"夜里工地", "停水三天"}


def test_cover_then_margin_switches_where_typical_then_margin_does():
    probs = np.random.default_rng(3).dirichlet(np.ones(4), size=6)
    pool = Pool([f"路灯坏了第{i}盏" for i in range(6)], [])
    grown = MATURE_MIN_LABELS + MATURE_LABELS_PER_DEPARTMENT * 4
    assert CoverThenMargin().rank(probs, None, grown, pool).tolist() == Margin().rank(probs).tolist()
    assert CoverThenMargin().rank(probs, None, 0, pool).tolist() == cover_order(pool, 4).tolist()


def test_typical_then_margin_is_the_default_and_takes_margin_once_the_model_is_mature():
    probs = np.random.default_rng(3).dirichlet(np.ones(4), size=6)
    pool = Pool([f"路灯坏了第{i}盏" for i in range(6)], [])
    grown = MATURE_MIN_LABELS + MATURE_LABELS_PER_DEPARTMENT * 4
    assert strategy(DEFAULT).__class__ is TypicalThenMargin
    assert TypicalThenMargin().rank(probs, None, grown, pool).tolist() == Margin().rank(probs).tolist()
    assert TypicalThenMargin().rank(probs, None, 0, pool).tolist() == typical_order(pool, MATURE_MIN_LABELS).tolist()
    # a caller with probabilities only gets random order
    assert TypicalThenMargin().rank(probs, np.random.default_rng(9)).tolist() == Random().rank(probs, np.random.default_rng(9)).tolist()


def test_random_then_margin_draws_randomly_while_the_model_is_young_and_by_margin_once_mature():
    probs = np.random.default_rng(3).dirichlet(np.ones(4), size=50)
    young, grown = MATURE_MIN_LABELS - 1, MATURE_MIN_LABELS + MATURE_LABELS_PER_DEPARTMENT * 4
    assert (RandomThenMargin().rank(probs, np.random.default_rng(9), young).tolist()
            == Random().rank(probs, np.random.default_rng(9)).tolist())
    assert RandomThenMargin().rank(probs, np.random.default_rng(9), grown).tolist() == Margin().rank(probs).tolist()


def test_tickets_that_share_no_n_gram_still_get_an_order():
    """Hostile or odd queues (issue 15): 300 one-character tickets leave TF-IDF no n-gram in two of them."""
    texts = [chr(0x4E00 + i) for i in range(300)]
    assert sorted(typical_order(Pool(texts, []), 300).tolist()) == list(range(300))
    assert sorted(typical_order(Pool(["", "!"], ["?"]), 300).tolist()) == [0, 1]
    assert sorted(cover_order(Pool(texts, []), 300).tolist()) == list(range(300))
    assert sorted(cover_order(Pool(["", "!"], ["?"]), 300).tolist()) == [0, 1]
