"""The LLM: prompt template, loading, exact scoring, one fine-tuning round (its own process). torch, transformers,
peft, TRL and unsloth are imported only here, and only when used."""
