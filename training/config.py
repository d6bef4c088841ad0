"""Every fine-tuning choice in one typed config, read from TRAIN_* environment variables.

The defaults are the original recipe's: LoRA r=64, alpha=64, dropout 0.05 on all attention and MLP projections,
lr 5e-5 with a cosine schedule after 5 warm-up steps, weight decay 0.01, 8-bit AdamW, bf16 where supported,
sequences of at most 896 tokens (MAX_SEQ_LENGTH), micro-batch 2 x accumulation 8, seed 3407.
"""
from __future__ import annotations

from dataclasses import dataclass

from backend.settings import EnvConfig, SettingsError, setting


@dataclass(frozen=True)
class TrainingConfig(EnvConfig):
    lora_r: int = setting("TRAIN_LORA_R", 64, "LoRA rank")
    lora_alpha: int = setting("TRAIN_LORA_ALPHA", 64, "LoRA alpha")
    lora_dropout: float = setting("TRAIN_LORA_DROPOUT", 0.05, "LoRA dropout")
    target_modules: str = setting("TRAIN_TARGET_MODULES", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "modules that get LoRA adapters")
    learning_rate: float = setting("TRAIN_LEARNING_RATE", 5e-5, "peak learning rate")
    lr_scheduler: str = setting("TRAIN_LR_SCHEDULER", "cosine", "learning-rate schedule after warm-up")
    warmup_steps: int = setting("TRAIN_WARMUP_STEPS", 5, "linear warm-up steps")
    weight_decay: float = setting("TRAIN_WEIGHT_DECAY", 0.01, "AdamW weight decay")
    optimizer: str = setting("TRAIN_OPTIMIZER", "adamw_8bit", "optimizer on CUDA (8-bit AdamW from bitsandbytes); the CPU path uses adamw_torch")
    micro_batch: int = setting("TRAIN_MICRO_BATCH", 2, "sequences per forward pass")
    grad_accumulation: int = setting("TRAIN_GRAD_ACCUMULATION", 8, "micro-batches per optimizer step")
    pad_to_multiple_of: int = setting("TRAIN_PAD_TO_MULTIPLE_OF", 64, "batches hold tickets of similar length, padded to the longest rounded up to this (a few shapes for the compiled kernels); MAX_SEQ_LENGTH pads every row to full length, as the original recipe did")
    epochs: float = setting("TRAIN_EPOCHS", 1.0, "passes over the round's data (new labels + replay)")
    seed: int = setting("TRAIN_SEED", 3407, "seed for data order, replay sampling and LoRA initialisation")
    replay_ratio: float = setting("REPLAY_RATIO", 1.0, "earlier gold labels replayed per new label, stratified by department, so the adapter keeps what it learnt")
    promote_tolerance: float = setting("PROMOTE_TOLERANCE", 0.0, "a candidate is promoted unless its macro-F1 on the frozen split falls below the serving version's by more than this")

    def validate(self) -> None:
        if min(self.lora_r, self.micro_batch, self.grad_accumulation, self.pad_to_multiple_of) <= 0:
            raise SettingsError("TRAIN_LORA_R, TRAIN_MICRO_BATCH, TRAIN_GRAD_ACCUMULATION and TRAIN_PAD_TO_MULTIPLE_OF must be positive")
        if not 0 < self.learning_rate < 10:
            raise SettingsError(f"TRAIN_LEARNING_RATE must be in (0, 10), got {self.learning_rate}")
        if self.replay_ratio < 0 or self.promote_tolerance < 0 or self.epochs <= 0:
            raise SettingsError("REPLAY_RATIO and PROMOTE_TOLERANCE must be >= 0 and TRAIN_EPOCHS > 0")

    @property
    def modules(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]
