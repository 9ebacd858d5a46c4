"""Training: `HybridTrainer`, its arguments, callbacks, checkpoints, data pipeline, recipes and the ablation."""
