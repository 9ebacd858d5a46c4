"""``evaluate`` module: SST-2 accuracy × 100 and invalid outputs, as `peft_hybrid.tasks.sst2.Sst2Task` scores it."""

from peft_hybrid.tasks.metrics._module import task_metric

Sst2 = task_metric("sst2", "GLUE SST-2 as generation: accuracy x 100 of the label word, and invalid outputs.")
