"""Department scoring against the original recipe's sampled generation, side by side in one run.

GPU (random weights in DeepSeek-R1-Distill-Qwen-7B's real shape, 4-bit through unsloth, the real tokenizer):

    python -m bench.llm_scoring --random-7b /tmp/r1-7b-random --tokenizer ../shared/models/r1-distill-qwen-tokenizer \\
        --tickets ../shared/data/shanghai_xinfang/dev.jsonl --out results.jsonl

CPU regression guard (the tiny Qwen2 built in code; anyone can run it):

    python -m bench.llm_scoring --tiny --tickets annotation_config/sample_tickets.jsonl

Methods, on the same tickets and the same 70 catalog departments:
  seed        the original recipe: generate(max_new_tokens=50, do_sample=True, temperature=0.7), regex for a department
  naive       label scoring without any reuse: every department appended to the full prompt (CPU only: slow)
  ours b1     LlmScorer, one ticket per call (latency)
  ours b32    LlmScorer, 32 tickets per call (throughput)
  prefill     the floor: only the tickets' own tokens through the model over the cached prefix, no departments
Speed and memory are real; with random weights the accuracy is not (hence no accuracy column).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from annotation_config.catalog import load_catalog
from training.llm_scorer import LlmEngine, LlmScorer, _fresh_cache
from training.prompt import PromptTemplate

R1_7B_SHAPE = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, vocab_size=152064, max_position_embeddings=131072, rope_theta=10000.0,
                   rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151646, eos_token_id=151643)


def build_random_7b(path: Path, tokenizer_dir: Path) -> Path:
    """Random bf16 weights of the real shape, built on the GPU and saved with the real tokenizer files."""
    import shutil

    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**R1_7B_SHAPE, torch_dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    for f in tokenizer_dir.iterdir():
        if f.suffix in (".json", ".txt") and f.name != "config.json":
            shutil.copy(f, path / f.name)
    return path


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def summary(name: str, latencies: list[float], tickets_per_call: int, **extra) -> dict:
    total = sum(latencies)
    ordered = sorted(latencies)
    return {"method": name, "calls": len(latencies), "tickets": len(latencies) * tickets_per_call,
            "tickets_per_s": round(len(latencies) * tickets_per_call / total, 2),
            "p50_latency_s": round(statistics.median(ordered), 4),
            "p95_latency_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4), **peak_gib(), **extra}


def seed_method(engine: LlmEngine, template: PromptTemplate, tickets: list[str], max_new_tokens: int = 50) -> dict:
    """The original recipe: sample 50 tokens, pull a department name out with a regex."""
    pattern = re.compile("|".join(re.escape(d) for d in sorted(template.departments, key=len, reverse=True)))
    latencies, valid = [], []
    model = engine.model
    for ticket in [tickets[0]] + tickets:  # the first call warms up generate and is not counted
        ids = template.prefix_ids + template.ticket_ids(ticket)[0] + template.response_open_ids
        inputs = torch.tensor([ids], device=engine.device)

        def generate():
            with torch.inference_mode():
                return model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                      min_new_tokens=max_new_tokens, do_sample=True, temperature=0.7,
                                      pad_token_id=template.eos_id)
        out = []
        latencies.append(timed(lambda: out.append(generate())))
        valid.append(bool(pattern.search(engine.tokenizer.decode(out[0][0, len(ids):], skip_special_tokens=True))))
    return summary("seed: generate 50 sampled tokens + regex, batch 1", latencies[1:], 1,
                   valid_department_share=round(sum(valid[1:]) / len(tickets), 3))


def naive_method(engine: LlmEngine, template: PromptTemplate, tickets: list[str]) -> dict:
    """Label scoring without reuse: prompt + each department as its own sequence, all in one padded batch."""
    latencies = [timed(lambda: naive_scores(engine, template, ticket, together=True)) for ticket in tickets]
    return summary("naive: 70 x (prompt + department), no cache", latencies, 1)


def ours(scorer: LlmScorer, tickets: list[str], batch: int) -> dict:
    latencies = []
    for start in range(0, len(tickets) - batch + 1, batch):
        chunk = tickets[start: start + batch]
        latencies.append(timed(lambda: scorer.predict_proba(chunk)))
    return summary(f"ours: trie scoring over the cached prefix, batch {batch}", latencies, batch)


def prefill_floor(scorer: LlmScorer, tickets: list[str], batch: int) -> dict:
    """Only the tickets' own tokens (plus the response opening) over the cached prefix: what scoring cannot beat."""
    prepared = scorer._prepare()
    engine = scorer.engine
    latencies = []
    for start in range(0, len(tickets) - batch + 1, batch):
        queries = [prepared.template.query_ids(t)[0] for t in tickets[start: start + batch]]
        width = max(len(q) for q in queries)
        ids = torch.tensor([q + [prepared.template.eos_id] * (width - len(q)) for q in queries], device=engine.device)
        prefix_len = len(prepared.template.prefix_ids)
        mask = torch.ones((len(queries), prefix_len + width), dtype=torch.long, device=engine.device)
        for i, q in enumerate(queries):
            mask[i, prefix_len + len(q):] = 0

        def run():
            with engine.session(scorer.adapter):
                engine.decoder(input_ids=ids, attention_mask=mask, use_cache=False,
                               past_key_values=_fresh_cache(prepared.prefix, len(queries), prepared.legacy_cache))
        latencies.append(timed(run))
    return summary(f"prefill floor: ticket tokens only, batch {batch}", latencies, batch)


def naive_scores(engine: LlmEngine, template: PromptTemplate, ticket: str, together: bool) -> torch.Tensor:
    """log P(department + eos | prompt) without any reuse: each department appended to the full prompt, run one
    sequence at a time, or all departments as one right-padded batch."""
    query, _ = template.query_ids(ticket)
    rows = [template.prefix_ids + query + d + [template.eos_id] for d in template.department_ids]
    groups = [rows] if together else [[r] for r in rows]
    scores = []
    with torch.inference_mode():
        for group in groups:
            width = max(len(r) for r in group)
            ids = torch.tensor([r + [template.eos_id] * (width - len(r)) for r in group], device=engine.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in group], device=engine.device)
            logprobs = torch.log_softmax(engine.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for i, r in enumerate(group):
                answer_len = len(r) - len(template.prefix_ids) - len(query)
                start = len(r) - answer_len
                scores.append(sum(logprobs[i, start - 1 + j, r[start + j]].item() for j in range(answer_len)))
    return torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)


def exactness(scorer: LlmScorer, tickets: list[str]) -> dict:
    """On this very model: the fast scorer against naive scoring. In bf16 two naive computations that differ only
    in batching already disagree; that disagreement is reported as the noise floor."""
    engine, template = scorer.engine, scorer._prepare().template
    ours_vs_naive, naive_vs_naive = 0.0, 0.0
    for ticket in tickets:
        fast = torch.tensor(scorer.predict_proba([ticket]).probs[0])
        alone, together = naive_scores(engine, template, ticket, False), naive_scores(engine, template, ticket, True)
        ours_vs_naive = max(ours_vs_naive, float((fast - alone).abs().max()))
        naive_vs_naive = max(naive_vs_naive, float((together - alone).abs().max()))
    return {"method": "exactness: max |P| difference against naive scoring", "tickets": len(tickets),
            "ours_vs_naive": ours_vs_naive, "noise_floor_naive_batched_vs_alone": naive_vs_naive}


def profile_b1(scorer: LlmScorer, tickets: list[str], path: Path) -> None:
    """Where one batch-1 call spends its time (torch profiler table)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for ticket in tickets:
            scorer.predict_proba([ticket])
        sync()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))


def load_engine(args) -> LlmEngine:
    from training.loading import load_model

    if args.tiny:
        from training.tiny_model import save_tiny_model

        path = save_tiny_model(Path(args.work) / "tiny-qwen2")
        model, tokenizer = load_model(str(path), args.max_seq_length, device="cpu")
    else:
        path = build_random_7b(Path(args.random_7b), Path(args.tokenizer))
        model, tokenizer = load_model(str(path), args.max_seq_length, device="cuda")
    return LlmEngine(model, tokenizer, args.max_seq_length)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm_scoring", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--tiny", action="store_true", help="CPU: the tiny Qwen2 built in code")
    model.add_argument("--random-7b", metavar="DIR", help="GPU: build (once) and load random weights of the real 7B shape here")
    parser.add_argument("--tokenizer", default="../shared/models/r1-distill-qwen-tokenizer", help="real tokenizer files (with --random-7b)")
    parser.add_argument("--tickets", type=Path, default=Path("annotation_config/sample_tickets.jsonl"), help="JSONL with a 'text' field")
    parser.add_argument("--max-seq-length", type=int, default=896)
    parser.add_argument("--seed-tickets", type=int, default=16, help="tickets for the seed method (about 1 s each on a GPU)")
    parser.add_argument("--b1-tickets", type=int, default=64)
    parser.add_argument("--b32-tickets", type=int, default=512)
    parser.add_argument("--work", default="/tmp/bench-llm", help="scratch folder")
    parser.add_argument("--out", type=Path, help="append one JSON line per method here")
    parser.add_argument("--profile", type=Path, help="also write a torch profiler table of 5 batch-1 calls here")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    texts = [json.loads(line)["text"] for line in args.tickets.read_text(encoding="utf-8").splitlines() if line.strip()]
    tickets = [rng.choice(texts) for _ in range(max(args.b32_tickets, args.b1_tickets, args.seed_tickets))]
    departments = load_catalog().names
    engine = load_engine(args)
    template = PromptTemplate(engine.tokenizer, departments, args.max_seq_length)
    scorer = LlmScorer(engine, "bench", departments, batch_size=32)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    ticket_tokens = [len(template.ticket_ids(t)[0]) for t in tickets]
    context = {"device": device, "departments": len(departments), "prefix_tokens": len(template.prefix_ids),
               "ticket_tokens_mean": round(statistics.mean(ticket_tokens), 1), "max_seq_length": args.max_seq_length,
               "model_memory_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}
    print(json.dumps(context, ensure_ascii=False), flush=True)

    scorer.predict_proba(tickets[:32])  # warm-up: prefix cache, kernels
    results = []
    for _name, run in [
        ("seed", lambda: seed_method(engine, template, tickets[: args.seed_tickets])),
        ("naive", lambda: naive_method(engine, template, tickets[: args.seed_tickets]) if args.tiny else None),
        ("b1", lambda: ours(scorer, tickets[: args.b1_tickets], 1)),
        ("b32", lambda: ours(scorer, tickets[: args.b32_tickets], 32)),
        ("prefill", lambda: prefill_floor(scorer, tickets[: args.b32_tickets], 32)),
        ("exact", lambda: exactness(scorer, tickets[:3])),
    ]:
        reset_peak()
        result = run()
        if result is None:
            continue
        result.update(context)
        results.append(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(result, ensure_ascii=False) + "\n")

    if args.profile:
        profile_b1(scorer, tickets[:5], args.profile)
    seed_rate = results[0]["tickets_per_s"]
    print("\n| method | tickets/s | x seed | p50 s | p95 s | peak alloc GiB |\n|---|---|---|---|---|---|")
    for r in results:
        if "tickets_per_s" in r:
            print(f"| {r['method']} | {r['tickets_per_s']} | {r['tickets_per_s'] / seed_rate:.1f} | {r['p50_latency_s']} | "
                  f"{r['p95_latency_s']} | {r.get('peak_allocated_gib', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
