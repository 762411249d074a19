"""LoRA finetuning of the answer model."""
