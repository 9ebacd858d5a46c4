"""``evaluate`` module: WikiSQL logical-form accuracy, exact match (and execution accuracy when the
rows carry their table), as `peft_hybrid.tasks.wikisql.WikisqlTask` scores it. Each reference is
``json.dumps`` of the example row, which holds the header and the gold query."""

from peft_hybrid.tasks.metrics._module import task_metric

Wikisql = task_metric("wikisql", "WikiSQL text-to-SQL: logical-form accuracy, exact match, execution accuracy x 100.")
