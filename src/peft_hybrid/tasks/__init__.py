"""Task registry: one `Task` instance per benchmark, looked up by name.

Built in: ``samsum`` (summarization, ROUGE), ``wikisql`` (text-to-SQL, logical-form accuracy),
``sst2`` (sentiment, accuracy). Register your own with `register_task`:

    >>> from peft_hybrid.tasks import Task, register_task, get_task
    >>> @register_task
    ... class MyTask(Task):
    ...     def __init__(self):
    ...         super().__init__(name="my_task", metric_for_best_model="accuracy")
    >>> get_task("my_task").name
    'my_task'
"""

from __future__ import annotations

from typing import TypeVar

from peft_hybrid.tasks.base import CardMetric, DataError, HubDataset, Task
from peft_hybrid.tasks.metrics import load_metric, metric_path
from peft_hybrid.tasks.samsum import SamsumTask
from peft_hybrid.tasks.sst2 import Sst2Task
from peft_hybrid.tasks.wikisql import WikisqlTask

__all__ = [
    "CardMetric",
    "DataError",
    "HubDataset",
    "Task",
    "get_task",
    "list_tasks",
    "load_metric",
    "metric_path",
    "register_task",
    "unregister_task",
]

_REGISTRY: dict[str, Task] = {}

T = TypeVar("T", Task, type)


def register_task(task: T, *, overwrite: bool = False) -> T:
    """Register a `Task` instance, or (as a class decorator) a `Task` subclass, under its name.

    Returns its argument unchanged. Raises ValueError when the name is empty or already taken
    (pass ``overwrite=True`` to replace a registered task on purpose).
    """
    instance = task() if isinstance(task, type) else task
    if not isinstance(instance, Task):
        raise TypeError(f"register_task expects a Task or Task subclass, got {task!r}")
    if not instance.name:
        raise ValueError(f"{type(instance).__name__} has no name; set name=... in its constructor")
    if instance.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a task named {instance.name!r} is already registered; pick another name or pass overwrite=True"
        )
    _REGISTRY[instance.name] = instance
    return task


def unregister_task(name: str) -> None:
    """Remove a registered task (mainly for tests and interactive use)."""
    _REGISTRY.pop(name, None)


def get_task(name: str) -> Task:
    """The registered task called ``name``; raises KeyError listing the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}. "
            "Register new ones with peft_hybrid.tasks.register_task"
        ) from None


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_REGISTRY)


for _builtin in (SamsumTask(), WikisqlTask(), Sst2Task()):
    register_task(_builtin)
del _builtin
