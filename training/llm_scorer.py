"""The LLM department classifier: P(department | ticket) by exact label scoring, not by sampling.

For every department d the score is log P(d's tokens, then end-of-sequence | prompt), normalised over the
departments — always a valid department, and a full distribution to sort on. The work per ticket is small:

1. The instruction and the department list are the same for every ticket: their key/value cache is computed
   once per model version and department list (``prefix cache``), and reused.
2. The departments form a token trie (every distinct token prefix is one node, so 市… is computed once for all).
3. One forward pass per batch runs, for each ticket, only its own tokens followed by every trie node, with a
   4-D attention mask: ticket tokens attend causally to the prefix and to each other, a trie node attends to the
   prefix, the whole ticket and its own ancestors. Position ids put each node right after its ticket, so the
   result equals running ``prompt + department`` for each department separately (tests check this to 1e-4).
4. Log-probabilities are read only at the ticket's last token and at the trie nodes, for only the tokens the
   trie needs (the vocabulary's log-normaliser is computed in chunks).

torch is imported here, never by the backend at import time.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from core.classifier import Distribution
from training.prompt import PromptTemplate

log = logging.getLogger(__name__)

LOGIT_CHUNK_ELEMENTS = 1 << 25  # rows x vocabulary per chunk when normalising logits (~128 MB in float32)


class DepartmentTrie:
    """Department token sequences as a trie; `slot` 0 is the ticket's last token, slot 1 + n is node n."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_id: int):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        nodes: dict[tuple[int, ...], int] = {}
        for seq in sequences:
            if not seq:
                raise ValueError("a department tokenized to nothing")
            for j in range(len(seq)):
                key = tuple(seq[: j + 1])
                if key not in nodes:
                    nodes[key] = len(self.tokens)
                    self.tokens.append(seq[j])
                    self.parents.append(nodes[key[:-1]] if j else -1)
                    self.depths.append(j)
        # What each slot must be scored on: its children's tokens, and eos where a department ends there.
        needed: list[list[int]] = [[] for _ in range(len(self.tokens) + 1)]
        paths = []
        for seq in sequences:
            path = []
            for j, token in enumerate(list(seq) + [eos_id]):
                slot = 0 if j == 0 else 1 + nodes[tuple(seq[:j])]
                if token not in needed[slot]:
                    needed[slot].append(token)
                path.append((slot, needed[slot].index(token)))
            paths.append(path)
        width = max(len(n) for n in needed)
        self.slot_tokens = torch.tensor([n + [n[0]] * (width - len(n)) for n in needed], dtype=torch.long)
        # Flattened (slot * width + column) per step of each department's path; padding points at a zero cell.
        length = max(len(p) for p in paths)
        self.zero_cell = len(needed) * width
        self.path_index = torch.tensor(
            [[s * width + c for s, c in p] + [self.zero_cell] * (length - len(p)) for p in paths], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestors_or_self(self) -> torch.Tensor:
        """(nodes, nodes) boolean: row n is True at n and at every ancestor of n."""
        n = len(self.tokens)
        visible = torch.zeros((n, n), dtype=torch.bool)
        for node in range(n):
            cursor = node
            while cursor != -1:
                visible[node, cursor] = True
                cursor = self.parents[cursor]
        return visible


class LlmEngine:
    """A loaded causal LM with its tokenizer and LoRA adapters; one forward pass at a time (one GPU)."""

    def __init__(self, model, tokenizer, max_seq_length: int = 896):
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.lock = threading.RLock()
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.dtype = self.lm_head.weight.dtype if self.lm_head.weight.is_floating_point() else torch.bfloat16

    @contextmanager
    def session(self, adapter: str | None):
        """Exclusive use of the model with `adapter` active (None: the base model without any adapter)."""
        from peft import PeftModel

        with self.lock, torch.inference_mode():
            if adapter is not None:
                self.model.set_adapter(adapter)
                yield
            elif isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield
            else:
                yield

    def load_adapter(self, path: str, name: str) -> None:
        """Add a LoRA adapter under `name`; the base weights are shared, so a version switch costs megabytes."""
        from peft import PeftModel

        with self.lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            self.model.eval()

    def drop_adapter(self, name: str) -> None:
        from peft import PeftModel

        with self.lock:
            if isinstance(self.model, PeftModel) and name in self.model.peft_config and len(self.model.peft_config) > 1:
                self.model.delete_adapter(name)

    def adapters(self) -> list[str]:
        return list(getattr(self.model, "peft_config", {}) or {})

    def prefix_cache(self, prefix_ids: list[int], adapter: str | None) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], bool]:
        """Key/value tensors of the prompt prefix, and whether the model uses the legacy tuple cache (unsloth)."""
        with self.session(adapter):
            out = self.decoder(input_ids=torch.tensor([prefix_ids], device=self.device), use_cache=True)
        cache = out.past_key_values
        if isinstance(cache, (tuple, list)):
            return [(k, v) for k, v in cache], True
        return [(layer.keys, layer.values) for layer in cache.layers], False


def _fresh_cache(tensors: list[tuple[torch.Tensor, torch.Tensor]], batch: int, legacy: bool):
    """The shared prefix as a cache for `batch` rows. The forward pass appends to its cache, so every call
    gets a new one; expand() shares the prefix's memory until attention concatenates it."""
    expanded = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in tensors]
    if legacy:
        return tuple(expanded)
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=expanded)


@dataclass
class _Prepared:
    """Everything about one version and department list that does not change from ticket to ticket."""

    template: PromptTemplate
    trie: DepartmentTrie
    prefix: list[tuple[torch.Tensor, torch.Tensor]]
    legacy_cache: bool
    # the trie, on the model's device
    node_visibility: torch.Tensor
    node_tokens: torch.Tensor
    node_depths: torch.Tensor
    slot_tokens: torch.Tensor
    path_index: torch.Tensor


class LlmScorer:
    """Implements the backend's Classifier interface for one model version and one department list."""

    def __init__(self, engine: LlmEngine, version: str, departments: Sequence[str], batch_size: int = 32,
                 adapter: str | None = None):
        self.engine = engine
        self.version = version
        self.departments = tuple(departments)
        self.batch_size = batch_size
        self.adapter = adapter
        self._prepared: _Prepared | None = None

    def _prepare(self) -> _Prepared:
        if self._prepared is None:
            engine = self.engine
            template = PromptTemplate(engine.tokenizer, self.departments, engine.max_seq_length)
            trie = DepartmentTrie(template.department_ids, template.eos_id)
            prefix, legacy = engine.prefix_cache(template.prefix_ids, self.adapter)
            device = engine.device
            self._prepared = _Prepared(
                template, trie, prefix, legacy, node_visibility=trie.ancestors_or_self().to(device),
                node_tokens=torch.tensor(trie.tokens, device=device), node_depths=torch.tensor(trie.depths, device=device),
                slot_tokens=trie.slot_tokens.to(device), path_index=trie.path_index.to(device))
            log.info("%s: prompt prefix %d tokens cached, %d departments in a %d-node token trie, up to %d ticket tokens",
                     self.version, len(template.prefix_ids), len(self.departments), len(trie), template.max_ticket_tokens)
        return self._prepared

    def predict_proba(self, texts: Sequence[str]) -> Distribution:
        prepared = self._prepare()
        queries = [prepared.template.query_ids(t) for t in texts]
        truncated = np.array([cut for _, cut in queries], dtype=bool)
        if truncated.any():
            log.info("%d of %d tickets were longer than %d tokens and were cut at the end", int(truncated.sum()),
                     len(texts), prepared.template.max_ticket_tokens)
        order = np.argsort([len(ids) for ids, _ in queries], kind="stable")  # similar lengths share a batch
        scores = np.zeros((len(texts), len(self.departments)))
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            scores[rows] = self._score([queries[i][0] for i in rows], prepared)
        scores -= scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        return Distribution(probs=probs / probs.sum(axis=1, keepdims=True), truncated=truncated)

    def _score(self, queries: list[list[int]], prepared: _Prepared) -> np.ndarray:
        """log P(department + eos | prompt) for each query (ticket + response opening) and department."""
        engine, trie = self.engine, prepared.trie
        device, batch, nodes = engine.device, len(queries), len(trie)
        prefix_len = len(prepared.template.prefix_ids)
        widest = max(len(q) for q in queries)
        width = widest + nodes
        if width > engine.max_seq_length:
            raise ValueError(f"{widest} query tokens + {nodes} trie nodes exceed MAX_SEQ_LENGTH={engine.max_seq_length}")

        # Built on the CPU and moved once. Left padding: every ticket's last token sits at column widest - 1.
        rows = [[prepared.template.eos_id] * (widest - len(q)) + q for q in queries]
        input_ids = torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)
        lengths = torch.tensor([len(q) for q in queries]).to(device, non_blocking=True)
        column = torch.arange(widest, device=device)
        real = column[None, :] >= (widest - lengths)[:, None]  # (batch, widest)
        query_positions = torch.where(real, prefix_len + column[None, :] - (widest - lengths)[:, None], prefix_len)
        node_positions = prefix_len + lengths[:, None] + prepared.node_depths[None, :]
        input_ids = torch.cat([input_ids, prepared.node_tokens.expand(batch, -1)], dim=1)
        positions = torch.cat([query_positions, node_positions], dim=1)

        allowed = torch.zeros((batch, width, prefix_len + width), dtype=torch.bool, device=device)
        allowed[:, :, :prefix_len] = True
        causal = torch.tril(torch.ones((widest, widest), dtype=torch.bool, device=device))
        allowed[:, :widest, prefix_len:prefix_len + widest] = causal[None] & real[:, None, :] & real[:, :, None]
        allowed[:, widest:, prefix_len:prefix_len + widest] = real[:, None, :]
        allowed[:, widest:, prefix_len + widest:] = prepared.node_visibility[None]
        mask = torch.zeros(allowed.shape, dtype=engine.dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(engine.dtype).min)

        with engine.session(self.adapter):
            hidden = engine.decoder(
                input_ids=input_ids, attention_mask=mask[:, None], position_ids=positions,
                past_key_values=_fresh_cache(prepared.prefix, batch, prepared.legacy_cache), use_cache=False,
            ).last_hidden_state
            slots = torch.cat([hidden[:, widest - 1: widest], hidden[:, widest:]], dim=1)  # (batch, 1 + nodes, dim)
            logprobs = self._slot_logprobs(slots.reshape(-1, slots.shape[-1]), prepared.slot_tokens, batch)
        flat = torch.cat([logprobs.reshape(batch, -1), torch.zeros((batch, 1), device=logprobs.device)], dim=1)
        return flat[:, prepared.path_index].sum(dim=-1).double().cpu().numpy()

    def _slot_logprobs(self, rows: torch.Tensor, slot_tokens: torch.Tensor, batch: int) -> torch.Tensor:
        """log-softmax over the vocabulary at each slot, kept only for the tokens the trie needs there."""
        width = slot_tokens.shape[1]
        slot_tokens = slot_tokens.repeat(batch, 1)  # (batch * slots, width)
        vocab = self.engine.lm_head.out_features if hasattr(self.engine.lm_head, "out_features") else self.engine.lm_head.weight.shape[0]
        step = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
        out = []
        for start in range(0, rows.shape[0], step):
            logits = self.engine.lm_head(rows[start: start + step]).float()
            out.append(logits.gather(1, slot_tokens[start: start + step]) - torch.logsumexp(logits, dim=1, keepdim=True))
        return torch.cat(out).reshape(batch, -1, width)
