"""Integrated Gradients attribution over the soft prompt and the input tokens, and its heatmaps."""
