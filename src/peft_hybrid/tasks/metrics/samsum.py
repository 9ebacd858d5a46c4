"""``evaluate`` module: SAMSum ROUGE-1/2/L/Lsum × 100, as `peft_hybrid.tasks.samsum.SamsumTask` scores it."""

from peft_hybrid.tasks.metrics._module import task_metric

Samsum = task_metric("samsum", "SAMSum summarization: mean per-example ROUGE F-measure x 100 (stemmed).")
