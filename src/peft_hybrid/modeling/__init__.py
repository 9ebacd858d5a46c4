"""The model: a frozen T5-family base with LoRA layers and an encoder soft prompt, and its folder format."""
