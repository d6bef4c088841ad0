"""Fill the compiled-kernel cache before a round needs it, so the first round after a start does not pay it.

    python -m training.warmup          # MODEL_DIR, BASE_MODEL, TRAIN_* from the environment

On CUDA, unsloth compiles kernels for the shapes a round meets on its first step: 25-42 s more on a cold cache than
on a warm one (BENCHMARKS.md). This runs one short fine-tuning on synthetic tickets of every padded length a round
uses, keeps the kernels under MODEL_DIR/cache/ (where rounds look for them), throws the adapter away and
writes MODEL_DIR/cache/warm.json naming what it warmed. The service's training runner runs it once before its first
round; a queue worker (training.worker) before it takes jobs. On a CPU nothing is compiled: it does nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from core.settings import Settings, TrainingConfig

log = logging.getLogger("training.warmup")


def _key(settings: Settings, config: TrainingConfig, micro_batch: int, grad_accumulation: int) -> str:
    import torch

    parts = [settings.base_model, settings.max_seq_length, micro_batch, grad_accumulation, config.pad_to_multiple_of, config.lora_r,
             config.modules, torch.__version__, torch.cuda.get_device_name()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def warm(settings: Settings, config: TrainingConfig) -> dict:
    """What was done: skipped (no CUDA, already warm) or the seconds the warm-up took."""
    from training.loading import resolve_device

    if resolve_device(settings.training_device) != "cuda":
        return {"skipped": "no CUDA device: the CPU path compiles nothing"}
    from annotation_config.catalog import load_catalog
    from training.loading import load_model
    from training.prompt import PromptTemplate
    from training.round import attach_lora, fine_tune, keep_compiled_kernels, split_batch

    keep_compiled_kernels(settings)

    micro_batch, grad_accumulation = split_batch(config, cuda=True)
    marker = settings.model_dir / "cache" / "warm.json"
    key = _key(settings, config, micro_batch, grad_accumulation)
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return {"skipped": "the cache is warm for this model and these settings"}
    started = time.perf_counter()
    model, tokenizer = load_model(settings.base_model, settings.max_seq_length, settings.training_device, for_training=True)
    model = attach_lora(model, config, True, None)
    template = PromptTemplate(tokenizer, load_catalog(settings.catalog).names, settings.max_seq_length)
    filler = template.ticket_ids("来电人反映小区噪音扰民请相关部门处理" * 100)[0]
    fixed = len(template.training_example("", template.departments[0]).input_ids)
    examples = []
    for length in range(config.pad_to_multiple_of, settings.max_seq_length + 1, config.pad_to_multiple_of):
        ticket = tokenizer.decode(filler[: max(1, length - fixed)])
        encoded = template.training_example(ticket, template.departments[0])
        examples += [{"input_ids": encoded.input_ids, "labels": encoded.labels}] * (micro_batch * grad_accumulation)
    short = config.replace(micro_batch=micro_batch, grad_accumulation=grad_accumulation, epochs=1.0)
    with tempfile.TemporaryDirectory(prefix="warmup-") as out:
        stats = fine_tune(model, tokenizer, examples, short, True, Path(out), settings.max_seq_length)
    result = {"key": key, "seconds": round(time.perf_counter() - started, 1), "first_step_seconds": stats["first_step_seconds"],
              "steps": stats["steps"], "micro_batch": micro_batch, "grad_accumulation": grad_accumulation}
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m training.warmup", description=__doc__.split("\n\n")[0]).parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = warm(Settings.from_env(), TrainingConfig.from_env())
    log.info("warm-up: %s", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
