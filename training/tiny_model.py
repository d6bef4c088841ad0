"""A tiny Qwen2 with random weights and a character-level tokenizer, both built in code.

No model can be downloaded here, so tests, the CPU benchmark and anyone trying the LLM path without a GPU use this
stand-in: same architecture family as DeepSeek-R1-Distill-Qwen-7B, same loading, scoring and fine-tuning code.

    python -m training.tiny_model models/tiny-qwen2      # then BASE_MODEL=models/tiny-qwen2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<think>", "</think>"]
CHARACTER_RANGES = [
    (0x3000, 0x303F),  # CJK punctuation
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xFF00, 0xFFEF),  # full-width forms (，：（）)
]


def _byte_alphabet() -> dict[int, str]:
    """GPT-2/Qwen2 byte-level alphabet: every byte as a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tokenizer():
    """A real Qwen2Tokenizer (byte-level BPE, the class the R1-Distill files load as) whose merges make every
    CJK character one token; ASCII stays one token per byte. Round-trips any text exactly."""
    from transformers import Qwen2Tokenizer

    alphabet = _byte_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    pair_merges, char_merges = {}, {}
    for lo, hi in CHARACTER_RANGES:
        for code in range(lo, hi + 1):
            u = [alphabet[b] for b in chr(code).encode("utf-8")]
            if len(u) != 3:
                continue
            pair_merges.setdefault((u[0], u[1]), u[0] + u[1])
            char_merges.setdefault((u[0] + u[1], u[2]), "".join(u))
    for token in list(pair_merges.values()) + list(char_merges.values()):
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=list(pair_merges) + list(char_merges), unk_token=None,
        bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>", pad_token="<｜end▁of▁sentence｜>",
    )
    tokenizer.add_tokens(["<think>", "</think>"])
    return tokenizer


def build_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        # Larger than the usual 0.02 so a frozen random LM head can express a confident answer: with 0.02 its
        # logits stay near uniform whatever LoRA learns, and nothing measurable is learnt in a test's few steps.
        initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config).eval()


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write config, random weights and tokenizer to `path`, loadable as BASE_MODEL."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="directory to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"wrote a tiny Qwen2 to {save_tiny_model(args.path, args.seed)}; use it with BASE_MODEL={args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
