"""The LLM scorer is exact: its cached, batched, trie-shaped pass equals scoring each department naively."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training.llm_scorer import LlmEngine, LlmScorer
from training.prompt import PromptTemplate, PromptTooLong
from training.tiny_model import build_model, build_tokenizer

SHARED_PREFIXES = ["市公安局", "市公安局交通警察支队", "市公交集团", "市水务局", "市水务局排水管理处", "市教育局", "市"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def engine_for(tokenizer, seed: int, max_seq_length: int = 896) -> LlmEngine:
    return LlmEngine(build_model(tokenizer, seed=seed), tokenizer, max_seq_length=max_seq_length)


def naive_distribution(engine: LlmEngine, departments, ticket: str) -> np.ndarray:
    """No cache, no trie, no batching: the whole prompt followed by each department, one sequence at a time."""
    template = PromptTemplate(engine.tokenizer, departments, engine.max_seq_length)
    query, _ = template.query_ids(ticket)
    scores = []
    with torch.no_grad():
        for answer in template.department_ids:
            answer = answer + [template.eos_id]
            ids = template.prefix_ids + query + answer
            logprobs = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].double(), dim=-1)
            start = len(ids) - len(answer)
            scores.append(sum(logprobs[start - 1 + j, token].item() for j, token in enumerate(answer)))
    scores = np.array(scores)
    return np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()


def random_ticket(rng: random.Random) -> str:
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 60))) + rng.choice(["。", "？", "！"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_the_naive_full_sequence_computation(tokenizer, seed):
    rng = random.Random(seed)
    engine = engine_for(tokenizer, seed)
    departments = SHARED_PREFIXES + ["".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(2, 9))) for _ in range(8)]
    rng.shuffle(departments)
    scorer = LlmScorer(engine, "v", departments, batch_size=3)
    tickets = [random_ticket(rng) for _ in range(7)]  # uneven lengths, more than one batch
    probs = scorer.predict_proba(tickets).probs
    for ticket, row in zip(tickets, probs):
        np.testing.assert_allclose(row, naive_distribution(engine, departments, ticket), atol=1e-4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_a_department_that_is_a_prefix_of_another_keeps_its_own_probability(tokenizer):
    engine = engine_for(tokenizer, 3)
    departments = ["市公安", "市公安局"]  # one token apart: end-of-sequence after 市公安 vs 局 then end
    probs = LlmScorer(engine, "v", departments).predict_proba(["车辆违停"]).probs[0]
    np.testing.assert_allclose(probs, naive_distribution(engine, departments, "车辆违停"), atol=1e-4)
    assert probs[1] > 0 and probs[0] < 1


def test_batch_composition_does_not_change_a_tickets_distribution(tokenizer):
    engine = engine_for(tokenizer, 4)
    scorer = LlmScorer(engine, "v", SHARED_PREFIXES, batch_size=8)
    alone = scorer.predict_proba(["小区电梯坏了"]).probs[0]
    together = scorer.predict_proba(["很长的一段工单内容" * 5, "小区电梯坏了", "短"]).probs[1]
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_long_tickets_are_cut_inside_the_ticket_and_reported(tokenizer):
    engine = engine_for(tokenizer, 5, max_seq_length=360)
    scorer = LlmScorer(engine, "v", SHARED_PREFIXES)
    template = PromptTemplate(tokenizer, SHARED_PREFIXES, 360)
    long_ticket = "噪音扰民" * 200
    dist = scorer.predict_proba([long_ticket, "噪音扰民"])
    assert dist.truncated.tolist() == [True, False]
    query, cut = template.query_ids(long_ticket)
    assert cut and query[-len(template.response_open_ids) - len(template.think_close_ids):] == \
        template.response_open_ids + template.think_close_ids  # the answer slot is intact
    kept = tokenizer.decode(query[: template.max_ticket_tokens])
    assert long_ticket.startswith(kept) and len(kept) == template.max_ticket_tokens
    np.testing.assert_allclose(dist.probs[0], naive_distribution(engine, SHARED_PREFIXES, long_ticket), atol=1e-4)
    with pytest.raises(PromptTooLong, match="raise MAX_SEQ_LENGTH"):
        PromptTemplate(tokenizer, SHARED_PREFIXES * 20, 360)


def test_training_text_carries_the_department_and_loss_is_on_the_answer_only(tokenizer):
    template = PromptTemplate(tokenizer, SHARED_PREFIXES, 896)
    example = template.training_example("小区电梯坏了", "市公安局", rationale="涉及治安")
    text = tokenizer.decode(example.input_ids)
    assert text.endswith("涉及治安\n</think>\n\n市公安局" + tokenizer.eos_token)
    answer = tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != -100])
    assert answer == "涉及治安\n</think>\n\n市公安局" + tokenizer.eos_token
    # what scoring reads after the query is exactly what training taught
    query, _ = template.query_ids("小区电梯坏了")
    plain = template.training_example("小区电梯坏了", "市公安局")
    assert plain.input_ids == template.prefix_ids + query + template.department_ids[0] + [template.eos_id]
