"""peft_hybrid: LoRA + encoder soft prompt tuning for T5-family seq2seq models."""

__version__ = "0.1.0"
