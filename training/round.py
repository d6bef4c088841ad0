"""One fine-tuning round, top to bottom, as the backend's job runner starts it in its own process:

    python -m training.round --job 7          # MODEL_DIR, BASE_MODEL, TRAIN_* ... come from the environment

1. claim the job            mark it running in the store, with this process's pid
2. choose the data          gold labels new since the serving adapter + a stratified replay of earlier ones, or,
                            beyond TRAIN_TOKEN_BUDGET, a recency-weighted stratified sample of all of them; the
                            estimated duration goes to the job before the model loads; the frozen evaluation
                            split is never trained on
3. load the model           4-bit unsloth on CUDA, float32 transformers + peft on CPU; a fresh LoRA, or the
                            serving adapter's weights to continue from
4. train                    TRL's SFTTrainer, loss on the answer only, length-grouped batches, progress to the store
5. save                     the adapter into a temporary folder, renamed into versions/ only when complete
6. gate                     candidate and serving version scored on the same frozen split; promoted unless its
                            macro-F1 falls by more than PROMOTE_TOLERANCE, else kept as rejected with its report
The serving process follows the registry: a promotion is hot-swapped there, without a restart.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from core.jobs import JobStatus, ModelKind, heartbeat, partial_dir, worker_id
from core.settings import Settings, TrainingConfig
from core.store import Store, StoredLabel, open_store

log = logging.getLogger("training.round")


# -- 2. data ----------------------------------------------------------------------------------------------------
def stratified_sample(labels: list[StoredLabel], k: int, seed: int) -> list[StoredLabel]:
    """k labels keeping each department's share (largest remainders), so rare departments are replayed too."""
    if k >= len(labels):
        return list(labels)
    if k <= 0:
        return []
    rng = random.Random(seed)
    by_department: dict[str, list[StoredLabel]] = defaultdict(list)
    for label in labels:
        by_department[label.department].append(label)
    exact = {d: k * len(group) / len(labels) for d, group in by_department.items()}
    quota = {d: int(q) for d, q in exact.items()}
    for d in sorted(exact, key=lambda d: exact[d] - quota[d], reverse=True)[: k - sum(quota.values())]:
        quota[d] += 1
    sample = []
    for d, group in sorted(by_department.items()):
        sample.extend(rng.sample(group, quota[d]))
    return sample


def choose_data(store: Store, project_id: int, departments: tuple[str, ...], parent_seq: int, config: TrainingConfig):
    train = [l for l in store.labels(project_id, split="train") if l.department in departments]
    new = [l for l in train if l.seq > parent_seq]
    replay = stratified_sample([l for l in train if l.seq <= parent_seq], round(config.replay_ratio * len(new)), config.seed)
    held_out = [l for l in store.labels(project_id, split="eval") if l.department in departments]
    return train, new, replay, held_out


def recency_weighted_sample(labels: list[StoredLabel], k: int, half_life: int, seed: int) -> list[StoredLabel]:
    """k labels keeping each department's share, drawn within each department with weights halving every
    `half_life` labels back from the newest (weighted sampling without replacement, Efraimidis & Spirakis 2006):
    recent labels dominate, older ones still appear, rare departments keep their place."""
    if k >= len(labels):
        return list(labels)
    rng = random.Random(seed)
    newest_first = sorted(labels, key=lambda l: l.seq, reverse=True)
    key = {id(l): rng.random() ** (1.0 / 0.5 ** (rank / half_life)) for rank, l in enumerate(newest_first)}
    by_department: dict[str, list[StoredLabel]] = defaultdict(list)
    for label in newest_first:
        by_department[label.department].append(label)
    exact = {d: k * len(group) / len(labels) for d, group in by_department.items()}
    quota = {d: int(q) for d, q in exact.items()}
    for d in sorted(exact, key=lambda d: exact[d] - quota[d], reverse=True)[: k - sum(quota.values())]:
        quota[d] += 1
    return [l for d, group in sorted(by_department.items()) for l in sorted(group, key=lambda l: key[id(l)], reverse=True)[: quota[d]]]


def plan_round(train: list[StoredLabel], new: list[StoredLabel], replay: list[StoredLabel], template, config: TrainingConfig,
               tokens_per_second: float) -> tuple[list[StoredLabel], dict]:
    """The labels the round trains on and what it will cost. New labels plus replay, unless that exceeds
    TRAIN_TOKEN_BUDGET: then a recency-weighted stratified sample of every training label that fits it (a round on
    10^5 labels would take hours). Token counts are estimated from the ticket lengths before anything is loaded."""
    rng = random.Random(config.seed)
    probe = rng.sample(train, min(256, len(train)))
    chars = sum(len(l.text) for l in probe) or 1
    per_char = sum(len(template.ticket_ids(l.text)[0]) for l in probe) / chars
    fixed = len(template.prefix_ids) + len(template.response_open_ids) + len(template.think_close_ids) + 8  # + the answer

    def estimate(labels: list[StoredLabel]) -> int:
        return sum(fixed + min(template.max_ticket_tokens, round(per_char * len(l.text))) for l in labels)

    chosen, sampled = new + replay, False
    tokens = estimate(chosen)
    if tokens > config.token_budget:
        per_example = estimate(train) / len(train)
        chosen = recency_weighted_sample(train, max(1, int(config.token_budget / per_example)), config.recency_half_life, config.seed)
        tokens, sampled = estimate(chosen), True
    tokens = round(tokens * config.epochs)
    new_ids = {l.annotation_id for l in new}
    return chosen, {"examples": len(chosen), "estimated_tokens": tokens, "token_budget": config.token_budget, "sampled": sampled,
                    "new_in_round": sum(l.annotation_id in new_ids for l in chosen), "estimated_seconds": round(tokens / tokens_per_second)}


def measured_throughput(store: Store, config: TrainingConfig) -> float:
    """Non-padding tokens/s of the last round trained here (any project), else TRAIN_TOKENS_PER_SECOND."""
    for version in store.versions(kind=ModelKind.LLM, limit=20, newest_first=True):
        if version.data.get("tokens_per_second"):
            return float(version.data["tokens_per_second"])
    return config.tokens_per_second


# -- 3. model ---------------------------------------------------------------------------------------------------
def attach_lora(model, config: TrainingConfig, cuda: bool, parent_adapter: str | None):
    """A LoRA on every projection; when a serving adapter exists its weights are loaded to continue from."""
    if cuda:
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.modules, bias="none", use_gradient_checkpointing="unsloth", random_state=config.seed)
    else:
        import torch
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(config.seed)
        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                                 target_modules=config.modules, bias="none", task_type="CAUSAL_LM"))
    if parent_adapter:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        parent_config = json.loads((Path(parent_adapter) / "adapter_config.json").read_text())
        if (parent_config.get("r"), parent_config.get("lora_alpha")) == (config.lora_r, config.lora_alpha):
            result = set_peft_model_state_dict(model, load_file(str(Path(parent_adapter) / "adapter_model.safetensors")))
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"the adapter in {parent_adapter} does not fit this model: {result.unexpected_keys[:3]}")
            log.info("continuing from the serving adapter %s", parent_adapter)
        else:
            log.warning("the serving adapter has r=%s alpha=%s, this round r=%s alpha=%s: starting a fresh LoRA",
                        parent_config.get("r"), parent_config.get("lora_alpha"), config.lora_r, config.lora_alpha)
    return model


# -- 4. train ---------------------------------------------------------------------------------------------------
class JobProgress:
    """A TrainerCallback that writes step, loss and ETA to the job row, which /jobs and /metrics read."""

    def __init__(self, store: Store, job_id: int):
        from transformers import TrainerCallback

        store_, job = store, job_id

        class Callback(TrainerCallback):
            started = None
            loss = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.started = time.monotonic()
                store_.update_job(job, progress={"step": 0, "total_steps": state.max_steps, "phase": "training"})

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.loss = float(logs["loss"])

            def on_step_end(self, args, state, control, **kwargs):
                elapsed = time.monotonic() - self.started
                eta = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
                store_.update_job(job, progress={"step": state.global_step, "total_steps": state.max_steps,
                                                 "loss": self.loss, "eta_seconds": round(eta, 1), "phase": "training"})

        self.callback = Callback()


def sft_trainer_class(cuda: bool):
    """TRL's SFTTrainer. Its loss runs through Triton kernels, which exist on the GPU only; on the CPU the model's
    own cross-entropy over the same labels is the same loss."""
    from transformers import Trainer
    from trl import SFTTrainer

    if cuda:
        return SFTTrainer

    class CpuSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return CpuSFTTrainer


class TokenCounter:
    """Wraps the data collator: counts the real (non-padding) and the processed tokens of every micro-batch."""

    def __init__(self, collate):
        self.collate = collate
        self.tokens = self.processed = 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else sum(len(e["input_ids"]) for e in examples)
        self.processed += batch["input_ids"].numel()
        return batch


FREE_GIB_FOR_8X2 = 11.0  # an 8 x 2 round peaked at 9.7 GiB reserved in its own process in the GPU benchmark


def split_batch(config: TrainingConfig, cuda: bool) -> tuple[int, int]:
    """Micro-batch and accumulation for TRAIN_MICRO_BATCH=0 (auto): 16 rows per optimizer step either way; 8 x 2 on
    a GPU with room for it (measured the same training as the recipe's 2 x 8, and 1.4-1.5x faster), else 2 x 8."""
    if config.micro_batch:
        return config.micro_batch, config.grad_accumulation or max(1, 16 // config.micro_batch)
    if cuda:
        import torch

        free, _ = torch.cuda.mem_get_info()
        if free / 2**30 >= FREE_GIB_FOR_8X2:
            return 8, config.grad_accumulation or 2
    return 2, config.grad_accumulation or 8


def fine_tune(model, tokenizer, examples: list[dict], config: TrainingConfig, cuda: bool, output_dir: Path,
              max_length: int, callbacks=()) -> dict:
    """TRL SFT on pre-tokenized examples ({"input_ids", "labels"}): our tokens and our loss mask are used as
    they are, so training sees exactly the sequences scoring reads.

    Batches hold tickets of similar length, padded to the longest of the batch rounded up to
    TRAIN_PAD_TO_MULTIPLE_OF: little padding, a handful of shapes for the compiled kernels, and the dense attention
    kernels. padding_free is set explicitly because unsloth otherwise decides it per GPU, and its flattening was
    measured slower per token on a GPU without FlashAttention (BENCHMARKS.md)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig

    class FirstStepClock(TrainerCallback):
        """The first optimizer step carries the kernel compilation; timed apart so throughput is not hidden by it."""
        began = first_step = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.first_step is None:
                self.first_step = time.perf_counter() - self.began

    full_rows = config.pad_to_multiple_of >= max_length
    bf16 = cuda and torch.cuda.is_bf16_supported()
    micro_batch, grad_accumulation = split_batch(config, cuda)
    args = SFTConfig(
        output_dir=str(output_dir), per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=grad_accumulation, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
        optim=config.optimizer if cuda else "adamw_torch", bf16=bf16, fp16=cuda and not bf16,
        num_train_epochs=config.epochs, seed=config.seed, data_seed=config.seed, max_length=max_length,
        padding_free=False, pad_to_multiple_of=min(config.pad_to_multiple_of, max_length),
        train_sampling_strategy="random" if full_rows else "group_by_length",
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=not cuda, dataloader_num_workers=0,
        disable_tqdm=False,
    )
    clock = FirstStepClock()
    trainer = sft_trainer_class(cuda)(model=model, args=args, train_dataset=Dataset.from_list(examples),
                                      processing_class=tokenizer, callbacks=[clock, *callbacks])
    # Tokens are counted as each batch is collated, on the CPU: the trainer's own count reads a GPU number back
    # once per micro-batch, a synchronisation on the hot path.
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    tokens, processed = counter.tokens, counter.processed
    return {"micro_batch": micro_batch, "grad_accumulation": grad_accumulation, "steps": result.global_step,
            "train_loss": round(float(result.training_loss), 4), "train_seconds": round(seconds, 2),
            "first_step_seconds": round(clock.first_step or 0.0, 2), "examples": len(examples), "tokens": int(tokens),
            "tokens_per_second": round(tokens / seconds, 1), "processed_tokens": int(processed),
            "padding_fraction": round(1 - tokens / processed, 4) if processed else None,
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None}


# -- 5. save ----------------------------------------------------------------------------------------------------
def save_adapter(model, versions_dir: Path, name: str, metadata: dict) -> Path:
    """Write into a temporary folder, flush it to disk, then rename: a crash mid-write leaves no version."""
    versions_dir.mkdir(parents=True, exist_ok=True)
    final = versions_dir / name
    partial = partial_dir(final)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(str(partial))
        (partial / "training.json").write_text(json.dumps(metadata, ensure_ascii=False, indent=2), encoding="utf-8")
        for file in partial.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def next_version_name(store: Store, project_id: int) -> str:
    numbers = [int(v.name.split("-")[1]) for v in store.versions(project_id, ModelKind.LLM)
               if v.name.startswith("lora-") and v.name.split("-")[1].isdigit()]
    return f"lora-{max(numbers, default=0) + 1}"


# -- 6. gate ----------------------------------------------------------------------------------------------------
def evaluate(engine, adapter: str | None, name: str, departments, held_out, settings: Settings) -> dict:
    """A version's report on the frozen split, with its auto-routing thresholds proven there."""
    from core.evaluation import evaluate as report
    from training.llm_scorer import LlmScorer

    return report(LlmScorer(engine, name, departments, batch_size=settings.predict_batch_size, adapter=adapter), held_out, settings.auto_routing())


def gate(candidate: dict, serving: dict, tolerance: float) -> tuple[bool, str]:
    new, old = candidate.get("macro_f1"), serving.get("macro_f1")
    if new is None or old is None:
        return True, "no evaluation labels yet: promoted without a comparison"
    if new >= old - tolerance:
        return True, f"macro-F1 {new:.4f} vs serving {old:.4f} (tolerance {tolerance})"
    return False, f"macro-F1 {new:.4f} fell below serving {old:.4f} by more than {tolerance}"


# -- the round --------------------------------------------------------------------------------------------------
def claim(store: Store, job_id: int, claimed_by: str) -> None:
    """The job is this worker's: claimed by the runner that started it, or claimed here (a queued job run by hand
    or by a queue worker). Anything else is refused: two workers never train the same round."""
    job = store.get_job(job_id)
    if job is None:
        raise RuntimeError(f"there is no job {job_id}")
    if job.claimed_by == claimed_by and job.status == JobStatus.RUNNING:
        return
    if store.claim_job(job_id, job.kind, claimed_by) is None:
        raise RuntimeError(f"job {job_id} is {job.status} and claimed by {job.claimed_by}: not this worker's to run")


def run_round(job_id: int, claimed_by: str, settings: Settings, config: TrainingConfig) -> str:
    """Returns the job's final status: promoted, rejected or succeeded (nothing new to learn)."""
    store = open_store(settings)
    # 1. claim the job; the worker says it is alive until the round ends
    claim(store, job_id, claimed_by)
    with heartbeat(store, job_id, claimed_by):
        return _round(store, job_id, claimed_by, settings, config)


def _round(store: Store, job_id: int, claimed_by: str, settings: Settings, config: TrainingConfig) -> str:
    from training.loading import load_model, load_tokenizer, resolve_device

    project_id = store.get_job(job_id).project_id
    seq = store.label_seq()
    store.update_job(job_id, pid=os.getpid(), label_seq=seq, progress={"phase": "preparing"})
    project = store.project(project_id)
    if project is None or not project.departments:
        raise RuntimeError(f"project {project_id} has no labeling config yet: connect it in Label Studio first")
    departments = project.departments
    parent = store.serving_version(project_id, ModelKind.LLM)

    # 2. choose the data, within the token budget
    train, new, replay, held_out = choose_data(store, project_id, departments, (parent.data.get("label_seq", 0) if parent else 0), config)
    if not new:
        store.finish_job(job_id, claimed_by, JobStatus.SUCCEEDED, progress={"phase": "done"},
                         error="no new gold labels since the serving version: nothing to train")
        return JobStatus.SUCCEEDED
    from training.prompt import PromptTemplate

    template = PromptTemplate(load_tokenizer(settings.base_model, settings.training_device), departments, settings.max_seq_length)
    chosen, plan = plan_round(train, new, replay, template, config, measured_throughput(store, config))
    store.update_job(job_id, progress={"phase": "loading model", **plan})
    log.info("job %d, project %d: %d new labels, %d replayed, %d held out for the gate; parent %s; plan %s", job_id, project_id,
             len(new), len(replay), len(held_out), parent.name if parent else "base model", plan)

    # 3. load the model
    cuda = resolve_device(settings.training_device) == "cuda"
    model, tokenizer = load_model(settings.base_model, settings.max_seq_length, settings.training_device, for_training=True)
    parent_path = str(settings.model_path(parent.path)) if parent and parent.path else None
    model = attach_lora(model, config, cuda, parent_path)
    examples = []
    for label in chosen:
        encoded = template.training_example(label.text, label.department, label.rationale)
        examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    random.Random(config.seed).shuffle(examples)

    # 4. train
    stats = fine_tune(model, tokenizer, examples, config, cuda, settings.model_dir / "jobs" / f"{job_id}-trainer",
                      settings.max_seq_length, callbacks=[JobProgress(store, job_id).callback])
    log.info("job %d trained: %s", job_id, stats)

    # 5. save
    name = next_version_name(store, project_id)
    metadata = {"job": job_id, "parent": parent.name if parent else None, "base_model": settings.base_model,
                "label_seq": seq, "labels": store.label_stats(project_id)["labels"], "new_labels": len(new),
                "replay_labels": len(replay), "plan": plan, **stats,
                "config": {k: v for k, v in config.to_env().items()}}
    path = save_adapter(model, settings.project_dir(project_id) / "versions", name, metadata)
    store.add_version(project_id, name, ModelKind.LLM, status="candidate", parent=parent.name if parent else None,
                      path=settings.registry_path(path), data=metadata)

    # 6. gate: both versions on the same frozen split
    store.update_job(job_id, status=JobStatus.EVALUATING, version=name, progress={"phase": "evaluating", "step": stats["steps"],
                                                                         "total_steps": stats["steps"]})
    from training.llm_scorer import LlmEngine

    if cuda:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    engine = LlmEngine(model, tokenizer, settings.max_seq_length)
    candidate = evaluate(engine, "default", name, departments, held_out, settings)
    if parent_path:
        engine.load_adapter(parent_path, "serving")
        serving = evaluate(engine, "serving", parent.name, departments, held_out, settings)
    else:
        serving = evaluate(engine, None, parent.name if parent else "base", departments, held_out, settings)
    promote, reason = gate(candidate, serving, config.promote_tolerance)
    report = {**candidate, "serving_version": parent.name if parent else None, "serving_metrics": serving, "gate": reason}
    store.update_version(project_id, name, metrics=report, note=reason)
    if parent:
        store.update_version(project_id, parent.name, metrics={**parent.metrics, "on_split_of": name, **serving})
    store.update_job(job_id, progress={"phase": "done", "step": stats["steps"], "total_steps": stats["steps"]})
    if promote:
        status = JobStatus.PROMOTED if store.promote_for_job(job_id, claimed_by, project_id, name) else JobStatus.FAILED
    else:
        store.update_version(project_id, name, status="rejected")
        status = JobStatus.REJECTED if store.finish_job(job_id, claimed_by, JobStatus.REJECTED) else JobStatus.FAILED
    if status == JobStatus.FAILED:
        log.warning("job %d was declared lost while it ran: %s stays a candidate, nothing promoted", job_id, name)
    log.info("job %d, project %d: %s %s (%s)", job_id, project_id, name, status, reason)
    return status


def keep_compiled_kernels(settings: Settings) -> None:
    """Compiled kernels (torch's and triton's) are kept with the models, on the volume that outlives a container,
    so every round after the first — and after the warm-up — skips most of the compilation."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.model_dir / "cache" / "torchinductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(settings.model_dir / "cache" / "triton"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.round", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=int, required=True, help="id of the queued job in the store")
    parser.add_argument("--claimed-by", default=None, help="the runner that claimed the job (default: claim it here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, config = Settings.from_env(), TrainingConfig.from_env()
    keep_compiled_kernels(settings)
    claimed_by = args.claimed_by or worker_id()
    try:
        run_round(args.job, claimed_by, settings, config)
    except Exception as exc:
        log.exception("job %d failed", args.job)
        open_store(settings).finish_job(args.job, claimed_by, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
