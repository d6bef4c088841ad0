"""One fine-tuning round on the GPU, side by side with the original recipe, with the serving model loaded.

    python -m bench.training_round --random-7b /tmp/r1-7b-random --tokenizer .bench-data/tokenizer \\
        --tickets .bench-data/shanghai_tickets.jsonl --labels 1000 --out results.jsonl

This process plays the serving backend: it loads the 4-bit model and scores a batch, so its memory is in use.
Then, each in its own process as in production:
  warm-up    `python -m training.warmup`, as the service's training runner runs it once before its first round: it
             fills the compiled-kernel cache the round then finds (skip with --no-warm-up to time a cold first round)
  ours       `python -m training.round` on a label store of 1,000 gold labels (a fifth frozen for the gate), with the
             defaults (micro-batch auto: 8 x 2 where the GPU has room): answer-only loss, length-grouped batches
             padded to a multiple of 64; timed from the job request to the promoted adapter
  original   the recipe's way on the same training labels: loss on the whole prompt, every sequence padded to 896,
             micro-batch 2 x 8
Both use the recipe's hyper-parameters otherwise (LoRA r=64, 16 rows per step, 8-bit AdamW, one epoch);
--micro-batch and --grad-accumulation force ours, --original-also-at adds the original at another split,
--second-round adds a round of ours continuing from the promoted adapter, --cold-also adds a round of ours on an
empty compile cache. GPU memory is sampled with nvidia-smi while they run: serving and training together must fit a
24 GB card. bench/gpu_run.sh runs it on the lent GPU (BENCHMARKS.md, section 2).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from annotation_config.catalog import DEFAULT_LABELING_CONFIG, load_catalog
from core.jobs import JobKind, ModelKind, launch_worker
from core.settings import Settings, TrainingConfig
from core.store import Label, Store, open_store

PADDED_LENGTH = 896


class GpuMemorySampler:
    """Peak of nvidia-smi's memory.used on GPU 0 (every process on the card, CUDA contexts included)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak_mib, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.peak_mib = max(self.peak_mib, int(out.stdout.split()[0]))
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak_mib = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_labels(tickets_path: Path, n: int, departments: tuple[str, ...]) -> list[tuple[str, str]]:
    """Real ticket texts with departments drawn at random: with random weights only speed and memory matter."""
    rng = random.Random(0)
    texts = [json.loads(line)["text"] for line in tickets_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(rng.choice(texts), rng.choice(departments)) for _ in range(n)]


def run_ours(base_model: str, labels: list[tuple[str, str]], work: Path, config: TrainingConfig, first_id: int = 1,
             name: str = "ours") -> dict:
    """A round exactly as the service runs it; called again with more labels it continues from the promoted adapter."""
    settings = Settings(model_dir=work / "ours", base_model=base_model, training_device="cuda")
    store = open_store(settings)
    for i, (text, department) in enumerate(labels, start=first_id):
        store.upsert_label(Label(annotation_id=i, project_id=1, task_id=i, text=text, department=department))
    store.remember_project(1, DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8"), load_catalog().names)
    if store.serving_version(1, ModelKind.LLM) is None:
        store.add_version(1, "llm-base", ModelKind.LLM, status="serving", data={"base_model": base_model})
    env = {**os.environ, **settings.to_env(), **config.to_env()}
    started = time.perf_counter()
    job, _ = store.request_job(JobKind.TRAIN, "benchmark trigger", 1)
    launch_worker("training.round", ["--job", str(job.id)], env, work / f"{name}.log", die_with_parent=False).wait()
    wall = time.perf_counter() - started
    job = store.get_job(job.id)
    version = store.get_version(1, job.version) if job.version else None
    data = version.data if version else {}
    return {"recipe": f"ours: answer-only loss, length-grouped, padded to a multiple of {config.pad_to_multiple_of}, "
                      f"micro-batch {data.get('micro_batch')} x {data.get('grad_accumulation')}", "round": name, "status": job.status,
            "error": job.error,
            "version": job.version, "parent": version.parent if version else None, "gate": version.note if version else None,
            "new_labels": data.get("new_labels"), "replay_labels": data.get("replay_labels"),
            "trigger_to_promoted_s": round(wall, 1), "train_seconds": data.get("train_seconds"),
            "first_step_seconds": data.get("first_step_seconds"), "examples": data.get("examples"),
            "non_padding_tokens": data.get("tokens"), "non_padding_tokens_per_s": data.get("tokens_per_second"),
            "processed_tokens": data.get("processed_tokens"), "padding_fraction": data.get("padding_fraction"),
            "steps": data.get("steps"),
            "worker_peak_allocated_gib": data.get("peak_allocated_gib"), "worker_peak_reserved_gib": data.get("peak_reserved_gib"),
            "eval_labels": (version.metrics.get("n") if version else None)}


def run_warm_up(base_model: str, work: Path, config: TrainingConfig) -> dict:
    """The warm-up the service runs before its first round, on the MODEL_DIR our round uses (so it finds the cache)."""
    settings = Settings(model_dir=work / "ours", base_model=base_model, training_device="cuda")
    started = time.perf_counter()
    env = {**os.environ, **settings.to_env(), **config.to_env()}
    launch_worker("training.warmup", [], env, work / "warmup.log", die_with_parent=False).wait()
    marker = settings.model_dir / "cache" / "warm.json"
    done = json.loads(marker.read_text()) if marker.exists() else {"error": "the warm-up wrote no marker; see warmup.log"}
    return {"recipe": "warm-up: one short round over every padded length (once per machine and settings)", "round": "warm-up",
            "process_seconds": round(time.perf_counter() - started, 1), "first_step_seconds": done.get("first_step_seconds"),
            "train_seconds": done.get("seconds"), **{k: v for k, v in done.items() if k in ("steps", "micro_batch", "grad_accumulation", "error")}}


def run_original(base_model: str, work: Path, micro_batch: int = 2, grad_accumulation: int = 8) -> dict:
    labels_file = work / "original.jsonl"
    store = Store(work / "ours" / "store.sqlite3")  # the same training labels the round above used
    train = [(l.text, l.department) for l in store.labels(split="train")]
    labels_file.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in train), encoding="utf-8")
    name = "original" if (micro_batch, grad_accumulation) == (2, 8) else f"original-{micro_batch}x{grad_accumulation}"
    result = work / f"{name}.json"
    started = time.perf_counter()
    launch_worker("bench.training_round", ["--original-worker", "--model", base_model, "--labels-file", str(labels_file),
                                           "--result", str(result), "--micro-batch", str(micro_batch),
                                           "--grad-accumulation", str(grad_accumulation)],
                  os.environ, work / f"{name}.log", die_with_parent=False).wait()
    stats = json.loads(result.read_text()) if result.exists() else {"error": f"the original-recipe worker failed; see {name}.log"}
    return {"recipe": f"original: whole-prompt loss, padded to 896, micro-batch {micro_batch} x {grad_accumulation}",
            "process_seconds": round(time.perf_counter() - started, 1), **stats}


def original_worker(model_path: str, labels_file: Path, result: Path, config: TrainingConfig) -> None:
    """The recipe's training step on our sequences: every token is a target, every row 896 long."""
    from training.loading import load_model
    from training.prompt import PromptTemplate
    from training.round import attach_lora, fine_tune

    rows = [json.loads(line) for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    model, tokenizer = load_model(model_path, PADDED_LENGTH, "cuda", for_training=True)
    model = attach_lora(model, config, True, None)
    template = PromptTemplate(tokenizer, load_catalog().names, PADDED_LENGTH)
    examples = []
    for text, department in rows:
        ids = template.training_example(text, department).input_ids
        examples.append({"input_ids": ids, "labels": list(ids)})
    stats = fine_tune(model, tokenizer, examples, replace(config, pad_to_multiple_of=PADDED_LENGTH), True,
                      result.parent / "original-trainer", PADDED_LENGTH)
    stats["non_padding_tokens_per_s"] = stats.pop("tokens_per_second")
    stats["non_padding_tokens"] = stats.pop("tokens")
    stats["worker_peak_allocated_gib"] = stats.pop("peak_allocated_gib")
    stats["worker_peak_reserved_gib"] = stats.pop("peak_reserved_gib")
    result.write_text(json.dumps(stats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training_round", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--random-7b", metavar="DIR", default="/tmp/r1-7b-random", help="random weights of the real 7B shape (built once)")
    parser.add_argument("--tokenizer", default="../shared/models/r1-distill-qwen-tokenizer")
    parser.add_argument("--tickets", type=Path, default=Path("../shared/data/shanghai_xinfang/dev.jsonl"))
    parser.add_argument("--labels", type=int, default=1000, help="gold labels in the store (default: %(default)s)")
    parser.add_argument("--second-round", type=int, default=200, metavar="N",
                        help="then N more labels and a second round, continuing from the promoted adapter (0: skip)")
    parser.add_argument("--pad-to-multiple-of", type=int, default=TrainingConfig().pad_to_multiple_of, metavar="N",
                        help="our round's TRAIN_PAD_TO_MULTIPLE_OF (default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=TrainingConfig().micro_batch, metavar="N",
                        help="our round's TRAIN_MICRO_BATCH (default: %(default)s, auto)")
    parser.add_argument("--grad-accumulation", type=int, default=TrainingConfig().grad_accumulation, metavar="N",
                        help="our round's TRAIN_GRAD_ACCUMULATION (default: %(default)s, auto)")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the warm-up before our round (a cold first round)")
    parser.add_argument("--cold-also", action="store_true", help="then a round of ours on an empty compile cache")
    parser.add_argument("--skip-original", action="store_true", help="leave out the original recipe (its figures come from another run)")
    parser.add_argument("--original-also-at", type=int, nargs=2, metavar=("MICRO", "ACCUMULATION"),
                        help="then the original recipe once more with this micro-batch split (same batch of MICRO x ACCUMULATION)")
    parser.add_argument("--out", type=Path, help="append one JSON line per recipe here")
    parser.add_argument("--original-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--labels-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.original_worker:
        original_worker(args.model, args.labels_file, args.result,
                        TrainingConfig(micro_batch=args.micro_batch or 2, grad_accumulation=args.grad_accumulation or 8))
        return 0

    import torch

    from bench.llm_scoring import build_random_7b
    from training.llm_scorer import LlmEngine, LlmScorer
    from training.loading import load_model

    base = str(build_random_7b(Path(args.random_7b), Path(args.tokenizer)))
    departments = load_catalog().names
    labels = make_labels(args.tickets, args.labels, departments)
    model, tokenizer = load_model(base, 896, "cuda")
    serving = LlmScorer(LlmEngine(model, tokenizer, 896), "serving", departments, batch_size=32)
    serving.predict_proba([t for t, _ in labels[:32]])  # the serving process's working memory, as under load
    context = {"device": torch.cuda.get_device_name(), "labels": len(labels),
               "serving_allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
               "serving_reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 2)}
    print(json.dumps(context), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the gate cannot stop a round of random weights: every candidate is promoted, so the next one continues from it
        ours = TrainingConfig(pad_to_multiple_of=args.pad_to_multiple_of, micro_batch=args.micro_batch,
                              grad_accumulation=args.grad_accumulation, promote_tolerance=1.0)
        runs = ([] if args.no_warm_up else [lambda: run_warm_up(base, work, ours)]) + [lambda: run_ours(base, labels, work, ours)]
        if not args.skip_original:
            runs.append(lambda: run_original(base, work))
        if args.cold_also:
            runs.append(lambda: run_ours(base, labels, work / "cold", ours, name="ours-cold-cache"))
        if args.original_also_at:
            runs.append(lambda: run_original(base, work, *args.original_also_at))
        if args.second_round:
            more = make_labels(args.tickets, args.labels + args.second_round, departments)[args.labels:]
            runs.append(lambda: run_ours(base, more, work, ours, first_id=args.labels + 1, name="ours-second-round"))
        for run in runs:
            with GpuMemorySampler() as sampler:
                result = run()
            processed, seconds = result.get("processed_tokens"), result.get("train_seconds")
            result.update(context, gpu_peak_used_gib_all_processes=round(sampler.peak_mib / 1024, 2),
                          processed_tokens_per_s=round(processed / seconds, 1) if processed and seconds else None)
            results.append(result)
            print(json.dumps(result, ensure_ascii=False), flush=True)
            if args.out:  # each result and log as soon as it exists: a run cut by a time limit keeps what finished
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(result, ensure_ascii=False) + "\n")
                for log in work.glob("*.log"):
                    (args.out.parent / f"training-{log.name}").write_bytes(log.read_bytes()[-2_000_000:])
    print_table(results)
    return 0


def print_table(results: list[dict]) -> None:
    original = next((r for r in results if r["recipe"].startswith("original")), {})
    print("\n| recipe | non-padding tokens/s | x original | padding | first step s | train s | trigger to promoted s "
          "| GPU peak, all processes GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = (r.get("non_padding_tokens_per_s") or 0) / (original.get("non_padding_tokens_per_s") or float("nan"))
        print(f"| {r['recipe']}{' (' + r['round'] + ')' if r.get('round') else ''} | {r.get('non_padding_tokens_per_s')} "
              f"| {ratio:.2f} | {r.get('padding_fraction')} | {r.get('first_step_seconds')} | {r.get('train_seconds')} "
              f"| {r.get('trigger_to_promoted_s', '-')} | {r['gpu_peak_used_gib_all_processes']} |")


if __name__ == "__main__":
    sys.exit(main())
