"""Loading the LLM: unsloth 4-bit on CUDA, plain transformers (float32) on CPU, the same model either way.

unsloth is imported only on the CUDA path: it refuses to import without a GPU.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROBE = "小区电梯长期故障，物业不维修，请住建部门督促处理。"


class TokenizerBroken(RuntimeError):
    """The tokenizer does not encode Chinese text faithfully; the message says how to fix the files."""


def check_tokenizer(tokenizer, source: str) -> None:
    """Round-trip a known Chinese sentence. With transformers 5.x the official DeepSeek-R1-Distill files loaded
    from a local folder can encode Chinese to the wrong ids (transformers issue 45488): the text vanishes."""
    ids = list(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    problems = []
    if decoded != PROBE:
        problems.append(f"it decodes back to {decoded!r}")
    if len(ids) < 5:
        problems.append(f"it encodes to only {len(ids)} token(s) {ids}")
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        problems.append("it contains unknown-token ids")
    if problems:
        raise TokenizerBroken(
            f"The tokenizer in {source} does not round-trip Chinese text: for {PROBE!r} {'; '.join(problems)}. "
            "With transformers 5.x, the official DeepSeek-R1-Distill files loaded from a local folder hit transformers "
            "issue #45488 (the byte-level pre-tokenizer is replaced and Chinese text is lost). Remedy: in "
            f"{source}/tokenizer_config.json set \"tokenizer_class\": \"Qwen2Tokenizer\", or use the vocab.json + "
            "merges.txt files of the Qwen2 tokenizer (see shared/models/r1-distill-qwen-tokenizer), then restart."
        )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise RuntimeError("TRAINING_DEVICE=cuda but torch sees no CUDA device")
    return device


def load_tokenizer(base_model: str, device: str = "auto"):
    """The checked tokenizer of `base_model` alone (seconds, no weights): enough to plan a round."""
    if resolve_device(device) == "cuda":
        import unsloth  # noqa: F401  (must come before transformers to patch it)
    from transformers import AutoTokenizer

    if not Path(base_model).exists():
        raise FileNotFoundError(f"BASE_MODEL={base_model} does not exist; point it at a local copy of the weights")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    check_tokenizer(tokenizer, base_model)
    return tokenizer


def load_model(base_model: str, max_seq_length: int = 896, device: str = "auto", for_training: bool = False):
    """(model, tokenizer) for `base_model`, a local folder. On CUDA the weights are loaded in 4 bits by unsloth."""
    cuda = resolve_device(device) == "cuda"
    tokenizer = load_tokenizer(base_model, device)
    if cuda:
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=base_model, max_seq_length=max_seq_length, load_in_4bit=True, dtype=None, local_files_only=True)
        check_tokenizer(tokenizer, base_model)
        if not for_training:
            FastLanguageModel.for_inference(model)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        if not for_training:
            model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s (%s, %s)", base_model, type(model).__name__, "4-bit unsloth" if cuda else "float32 CPU")
    return model, tokenizer
