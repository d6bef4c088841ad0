"""The one prompt template, used by fine-tuning and by scoring alike (no train/serve skew).

It keeps the original recipe's style (R1's instruction preamble, ``### Question:``, ``### Response:`` and a
``<think>`` block) but fixes its bug: the recipe filled a two-slot template with
``train_prompt_style.format(input, cot, output)``, so the department never reached the training text. Here the
answer — optional rationale, then the department, then end-of-sequence — is an explicit segment.

A prompt is built from token segments, each tokenized on its own and concatenated:

    [prefix: instruction + department list + "### Question:"] [ticket] [response open: "### Response:" <think>]
    ([rationale: training only]) [think close: </think>] [department] [eos]

Because the segments never merge across their borders, the prefix's key/value cache can be computed once and
reused for every ticket, the ticket can be cut without touching the instruction or the answer slot, and scoring
sees exactly the token sequence training taught: ``think close + department + eos`` after the response opens.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INSTRUCTION = (
    "以下是描述任务的指令，以及提供进一步上下文的输入。\n"
    "请写出一个适当完成请求的回答。\n"
    "在回答之前，请仔细思考问题，并创建一个逻辑连贯的思考过程，以确保回答准确无误。\n\n"
    "### Instruction:\n"
    "你是一名12345政务服务便民热线的工单分派员，熟悉本市各承办单位的职责。"
    "请根据市民的诉求，从下列承办单位中选出最应当承办该工单的一个单位，只回答单位名称。\n"
    "承办单位：{departments}\n\n"
    "### Question:\n"
)
RESPONSE_OPEN = "\n\n### Response:\n<think>\n"
THINK_CLOSE = "\n</think>\n\n"
DEPARTMENT_SEPARATOR = "、"
MIN_TICKET_TOKENS = 16


class PromptTooLong(ValueError):
    """The instruction, the department list and the longest answer leave too little room for a ticket."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken (everything before the answer)
    truncated: bool


class PromptTemplate:
    def __init__(self, tokenizer, departments: Sequence[str], max_seq_length: int = 896):
        self.tokenizer = tokenizer
        self.departments = tuple(departments)
        self.max_seq_length = max_seq_length
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token; the answer could not end")
        self.eos_id = tokenizer.eos_token_id
        self.prefix_ids = bos + self._ids(INSTRUCTION.format(departments=DEPARTMENT_SEPARATOR.join(self.departments)))
        self.response_open_ids = self._ids(RESPONSE_OPEN)
        self.think_close_ids = self._ids(THINK_CLOSE)
        self.department_ids = [self._ids(d) for d in self.departments]
        longest_answer = max(len(ids) for ids in self.department_ids) + 1
        self.max_ticket_tokens = (max_seq_length - len(self.prefix_ids) - len(self.response_open_ids)
                                  - len(self.think_close_ids) - longest_answer)
        if self.max_ticket_tokens < MIN_TICKET_TOKENS:
            raise PromptTooLong(
                f"the prompt's instruction and {len(self.departments)} departments take {len(self.prefix_ids)} tokens, "
                f"leaving {self.max_ticket_tokens} for the ticket within MAX_SEQ_LENGTH={max_seq_length}; "
                f"raise MAX_SEQ_LENGTH or shorten the department list")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ticket_ids(self, ticket: str, budget: int | None = None) -> tuple[list[int], bool]:
        """The ticket's tokens, cut at the end to fit; the flag says it was cut."""
        ids = self._ids(ticket)
        budget = self.max_ticket_tokens if budget is None else budget
        return ids[:budget], len(ids) > budget

    def query_ids(self, ticket: str) -> tuple[list[int], bool]:
        """Everything after the cached prefix up to where the department starts (scoring)."""
        ids, truncated = self.ticket_ids(ticket)
        return ids + self.response_open_ids + self.think_close_ids, truncated

    def training_example(self, ticket: str, department: str, rationale: str | None = None) -> Encoded:
        """The full sequence with the loss on the answer only: rationale, think close, department, eos.

        A rationale may push the sequence past MAX_SEQ_LENGTH: then the rationale is cut first (the department
        must survive), and the ticket keeps the same room it has at scoring time."""
        answer_tail = self.think_close_ids + self._ids(department) + [self.eos_id]
        ticket, truncated = self.ticket_ids(ticket)
        head = self.prefix_ids + ticket + self.response_open_ids
        room = self.max_seq_length - len(head) - len(answer_tail)
        thought = self._ids(rationale.strip())[: max(room, 0)] if rationale and rationale.strip() else []
        answer = thought + answer_tail
        return Encoded(input_ids=head + answer, labels=[-100] * len(head) + answer, truncated=truncated)
