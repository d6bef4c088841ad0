"""The LLM side: prompt template, scoring and LoRA fine-tuning. Imports torch/transformers lazily."""
