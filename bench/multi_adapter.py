"""One base model, many projects' LoRA adapters: memory and tickets/s with mixed-project traffic, in one run.

GPU (random weights in DeepSeek-R1-Distill-Qwen-7B's real shape, 4-bit through unsloth, the real tokenizer, random
r=64 adapters on every projection, 70 catalog departments per project):

    python -m bench.multi_adapter --random-7b /tmp/r1-7b-random --tokenizer .bench-data/tokenizer \\
        --tickets .bench-data/shanghai_tickets.jsonl --out out/multi_adapter.jsonl

CPU (the tiny Qwen2, to check the script): ``python -m bench.multi_adapter --tiny``

Everything goes through the service's own path (``backend.models.ModelManager``: a line per project, the adapter
loaded beside the base under the project's name, one batching worker per project, LRU eviction over
ADAPTER_CACHE_MB). Scenarios, each with the same callers sending 8-ticket requests:
  1 adapter              every request for one project (its calls merge into batches of up to 32)
  N adapters, mixed      requests spread round-robin over N projects, all adapters resident
  16 adapters, budget 4  the same over 16 projects with room for 4 adapters: eviction and reload on demand
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from annotation_config.catalog import SAMPLE_TICKETS, load_catalog
from core.jobs import ModelKind
from core.labeling import LabelSpace
from core.settings import Settings
from core.store import Store


def make_adapter(path: Path, base_config, r: int, seed: int, modules: list[str]) -> int:
    """A LoRA adapter with random (non-zero) weights, written as peft writes one; returns its size in bytes."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    hidden, inner = base_config.hidden_size, base_config.intermediate_size
    head = getattr(base_config, "head_dim", None) or hidden // base_config.num_attention_heads
    shapes = {"q_proj": (hidden, base_config.num_attention_heads * head), "k_proj": (hidden, base_config.num_key_value_heads * head),
              "v_proj": (hidden, base_config.num_key_value_heads * head), "o_proj": (base_config.num_attention_heads * head, hidden),
              "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(base_config.num_hidden_layers):
        for module in modules:
            block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            inputs, outputs = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(r, inputs, generator=generator) * 0.01).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(outputs, r, generator=generator) * 0.01).to(torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    LoraConfig(r=r, lora_alpha=r, target_modules=modules, task_type="CAUSAL_LM").save_pretrained(str(path))
    return (path / "adapter_model.safetensors").stat().st_size


def catalog_space() -> LabelSpace:
    """The 70 catalog departments as the default labeling config names them (built directly: the GPU machine has no
    Label Studio SDK to parse a config with)."""
    return LabelSpace(department_control="department", to_name="text", data_key="text", departments=load_catalog().names,
                      rationale_control=None, suggestions_control=None)


def drive(models, projects: list[int], tickets: list[str], total: int, callers: int, per_request: int = 8) -> dict:
    """`callers` threads send `per_request` tickets each, round-robin over `projects`, until `total` are answered."""
    lock, sent, latencies = threading.Lock(), [0], []
    order = iter(range(10**9))

    def caller():
        while True:
            with lock:
                if sent[0] >= total:
                    return
                sent[0] += per_request
                n = next(order)
            project = projects[n % len(projects)]
            texts = [tickets[(n * per_request + i) % len(tickets)] for i in range(per_request)]
            started = time.perf_counter()
            models.predict(project, texts)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    latencies.sort()
    return {"tickets": sent[0], "seconds": round(seconds, 2), "tickets_per_second": round(sent[0] / seconds, 2),
            "p50_request_s": round(latencies[len(latencies) // 2], 3), "p95_request_s": round(latencies[int(len(latencies) * 0.95)], 3)}


def gpu_memory() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def scenario(name: str, base_model: str, adapters: list[Path], projects: int, budget_mb: int, tickets: list[str], total: int,
             callers: int, batch: int, device: str) -> dict:
    """A fresh service state (store, ModelManager) with `projects` projects, each serving its own adapter."""
    import shutil

    import torch

    from backend.models import ModelManager

    with tempfile.TemporaryDirectory(prefix="multi-adapter-") as tmp:
        settings = Settings(model_dir=Path(tmp), base_model=base_model, training_device=device, adapter_cache_mb=budget_mb,
                            predict_batch_size=batch, prepare_wait_seconds=600)
        store = Store(settings.store_location)
        space = catalog_space()
        for project in range(1, projects + 1):
            store.remember_project(project, None, space.departments)  # the space is given: no labeling config to parse
            home = settings.project_dir(project) / "versions" / "lora-1"
            home.parent.mkdir(parents=True)
            shutil.copytree(adapters[project - 1], home)
            store.add_version(project, "lora-1", ModelKind.LLM, status="candidate", path=settings.registry_path(home), metrics={"n": 0})
            store.promote_version(project, "lora-1")
        models = ModelManager(store, space, settings)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        models.load_llm()
        for project in range(1, projects + 1):
            models.line(project).ready.wait(600)
        ready = time.perf_counter() - started
        drive(models, list(range(1, projects + 1)), tickets, min(total, 64), callers)  # warm: prefix caches, kernels
        result = drive(models, list(range(1, projects + 1)), tickets, total, callers)
        for line in models.lines():
            if line.llm is not None:
                line.llm.close()
        loaded = models.adapter_state()
        out = {"scenario": name, "projects": projects, "adapter_cache_mb": budget_mb, "adapters_resident": len(loaded["loaded"]),
               "adapter_bytes_resident": loaded["bytes"], "load_and_activate_s": round(ready, 1), **result, **gpu_memory()}
        del models
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multi_adapter", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--tiny", action="store_true", help="CPU: the tiny Qwen2 built in code")
    model.add_argument("--random-7b", metavar="DIR", help="GPU: build (once) and load random weights of the real 7B shape here")
    parser.add_argument("--tokenizer", default="../shared/models/r1-distill-qwen-tokenizer", help="real tokenizer files (with --random-7b)")
    parser.add_argument("--tickets", type=Path, default=SAMPLE_TICKETS, help="JSONL with a text field (default: the sample tickets)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16], help="adapters (projects) per scenario (default: %(default)s)")
    parser.add_argument("--total", type=int, default=512, help="tickets per scenario (default: %(default)s)")
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank of the adapters (default: %(default)s)")
    parser.add_argument("--eviction-only", action="store_true",
                        help="run only the scenario of the most adapters with room for 4 (a second call when the others filled the first)")
    parser.add_argument("--out", type=Path, help="append the results as JSON lines here")
    args = parser.parse_args(argv)

    from transformers import AutoConfig

    work = Path(tempfile.mkdtemp(prefix="multi-adapter-bench-"))
    if args.tiny:
        from training.tiny_model import save_tiny_model

        base, device, modules, batch = str(save_tiny_model(work / "tiny")), "cpu", ["q_proj", "v_proj"], 8
        args.rank = min(args.rank, 8)
    else:
        from bench.llm_scoring import build_random_7b

        base, device, batch = str(build_random_7b(Path(args.random_7b), Path(args.tokenizer))), "cuda", 32
        modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    base_config = AutoConfig.from_pretrained(base)
    adapters, size = [], 0
    for i in range(max(args.counts)):
        size = make_adapter(work / f"adapter-{i}", base_config, args.rank, seed=i, modules=modules)
        adapters.append(work / f"adapter-{i}")
    rng = random.Random(0)
    tickets = [json.loads(line)["text"] for line in args.tickets.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng.shuffle(tickets)
    every = int(max(args.counts) * size / 2**20) + 64
    runs = [(f"{n} adapter{'s' if n > 1 else ''}{', mixed traffic' if n > 1 else ''}", n, every) for n in args.counts]
    if max(args.counts) >= 8:
        four = int(4 * size / 2**20) + 16
        runs.append((f"{max(args.counts)} adapters, room for 4 (LRU eviction)", max(args.counts), four))
    if args.eviction_only:
        runs = runs[-1:]
    results = []
    for name, n, budget in runs:
        result = scenario(name, base, adapters, n, budget, tickets, args.total, args.callers, batch, device)
        result["adapter_mib_each"] = round(size / 2**20, 1)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
    alone = results[0]["tickets_per_second"]  # with --eviction-only, the ratio is to itself
    print("\n| scenario | projects | adapters resident | tickets/s | × one adapter | p95 request | GPU allocated / peak reserved |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scenario']} | {r['projects']} | {r['adapters_resident']} | {r['tickets_per_second']} | {r['tickets_per_second'] / alone:.2f} |"
              f" {r['p95_request_s']} s | {r.get('allocated_gib', '-')} / {r.get('peak_reserved_gib', '-')} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
