"""A training round stays bounded however many labels exist: new labels plus replay while they fit the token
budget, else a stratified sample weighted towards recent labels; its cost is estimated before anything loads."""
from __future__ import annotations

from collections import Counter

from core.settings import TrainingConfig
from core.store import StoredLabel
from training.prompt import PromptTemplate
from training.round import plan_round, recency_weighted_sample
from training.tiny_model import build_tokenizer

DEPARTMENTS = ("市供电公司", "市自来水公司", "市燃气集团", "市公交集团")


def labels(n: int, shares=(0.55, 0.25, 0.15, 0.05)) -> list[StoredLabel]:
    """n labels in sequence order, the departments in fixed shares, every ticket 30 characters long."""
    cut = [round(sum(shares[: i + 1]) * n) for i in range(len(shares))]
    return [StoredLabel(annotation_id=i + 1, project_id=1, task_id=i + 1, text="停电" * 15, seq=i + 1,
                        department=DEPARTMENTS[next(j for j, c in enumerate(cut) if i < c)]) for i in range(n)]


def test_the_sample_keeps_department_shares_and_favours_recent_labels():
    pool = labels(20_000)
    sample = recency_weighted_sample(pool, 1_000, half_life=2_000, seed=7)
    assert len(sample) == 1_000 and len({l.annotation_id for l in sample}) == 1_000
    assert Counter(l.department for l in sample) == {d: round(1_000 * s) for d, s in zip(DEPARTMENTS, (0.55, 0.25, 0.15, 0.05))}
    # within a department the newest half is drawn far more often than the oldest half
    power = [l for l in sample if l.department == DEPARTMENTS[0]]
    newer = sum(l.seq > 5_500 for l in power)
    assert newer > 0.8 * len(power) and newer < len(power)  # older labels still appear
    assert recency_weighted_sample(pool, 1_000, half_life=2_000, seed=7) == sample  # deterministic for a seed


def test_a_round_over_the_budget_is_cut_to_it_and_its_cost_is_estimated():
    template = PromptTemplate(build_tokenizer(), DEPARTMENTS, 896)
    train = labels(30_000)
    config = TrainingConfig(token_budget=50_000)
    chosen, plan = plan_round(train, new=train[-20_000:], replay=[], template=template, config=config, tokens_per_second=1_000)
    per_example = plan["estimated_tokens"] / plan["examples"]
    assert plan["sampled"] and plan["estimated_tokens"] <= config.token_budget < plan["estimated_tokens"] + 2 * per_example
    exact = sum(len(template.training_example(l.text, l.department).input_ids) for l in chosen)
    assert abs(exact - plan["estimated_tokens"]) / exact < 0.05
    assert plan["estimated_seconds"] == round(plan["estimated_tokens"] / 1_000)
    assert plan["new_in_round"] > 0.8 * plan["examples"]  # the recent labels carry the round

    small = labels(40)
    chosen, plan = plan_round(small, new=small[-10:], replay=small[:10], template=template, config=config, tokens_per_second=1_000)
    assert not plan["sampled"] and [l.seq for l in chosen] == [*range(31, 41), *range(1, 11)]  # within budget: as before
