"""The recipes' ``--config file.yaml`` read strictly, and every argument's range checked at parse time.

A YAML value becomes an argument default only when it has the type the argument means: a boolean
is not a number, a number is not a string (quote a revision such as ``"0123"``, which YAML would
read as octal), ``.nan``/``.inf`` are not values, a list or mapping only where the argument takes
one, ``null`` only where it may be unset. A key given twice is refused naming both lines. Every
error names the file, the line and the key.

Ranges (a negative seed, a warm-up ratio above 1, ...) are declared once per field name in
`RANGES` (``HfArgumentParser`` hands a field's whole ``metadata`` to ``add_argument``, so it cannot
carry them) and checked on the parsed values of every argument class, naming the argument and, when
the value came from the YAML file, the file and line.

Example:
    >>> Range(low=0).problem(-1)
    'must be >= 0'
    >>> Range(low=0, high=1, high_open=True).problem(1.0)
    'must be in [0, 1)'
"""

from __future__ import annotations

import argparse
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric argument: ``low``/``high`` bounds (``None``: unbounded), ``*_open``
    for strict bounds, and ``also`` a sentinel allowed outside them (``max_steps=-1``: use epochs)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: float | None = None

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range, or ``None``."""
        if value == self.also:
            return None
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (too_low or too_high):
            return None
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"must be in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text = f"must be {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return text + (f" (or {self.also:g})" if self.also is not None else "")


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_ONE = Range(low=1)
FRACTION = Range(low=0, high=1)
# Field name -> allowed values, for transformers' arguments, ours and HybridConfig's alike.
RANGES: dict[str, Range] = {
    "seed": NON_NEGATIVE,
    "data_seed": NON_NEGATIVE,
    "num_train_epochs": POSITIVE,
    "max_steps": Range(low=1, also=-1),
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": Range(low=0, high=1, high_open=True),
    "adam_beta2": Range(low=0, high=1, high_open=True),
    "adam_epsilon": POSITIVE,
    "max_grad_norm": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    "warmup_ratio": FRACTION,
    "label_smoothing_factor": Range(low=0, high=1, high_open=True),
    "per_device_train_batch_size": AT_LEAST_ONE,
    "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "eval_accumulation_steps": AT_LEAST_ONE,
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": AT_LEAST_ONE,
    "dataloader_num_workers": NON_NEGATIVE,
    "generation_max_length": AT_LEAST_ONE,
    "generation_num_beams": AT_LEAST_ONE,
    "early_stopping_patience": NON_NEGATIVE,
    "early_stopping_threshold": NON_NEGATIVE,
    "max_source_length": AT_LEAST_ONE,
    "max_target_length": AT_LEAST_ONE,
    "max_train_samples": AT_LEAST_ONE,
    "max_eval_samples": AT_LEAST_ONE,
    # HybridConfig
    "r": NON_NEGATIVE,
    "lora_alpha": POSITIVE,
    "lora_dropout": Range(low=0, high=1, high_open=True),
    "num_virtual_tokens": NON_NEGATIVE,
}


# --- reading the file -------------------------------------------------------------------------
def read_yaml_config(
    path: str, parser: argparse.ArgumentParser, dataclass_types: Sequence[type]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The argument defaults in the YAML file ``path``, each checked and converted to its argument's type,
    and for each key where it came from (``"from --config FILE line N"``).

    Raises FileNotFoundError for a missing file and ValueError (naming file, line and key) for
    anything else: not a regular file, not UTF-8, not valid YAML, not a mapping, a duplicate or
    unknown key, a value of the wrong type.
    """
    from peft_hybrid.tasks._readers import read_text, require_regular_file

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(
            f"--config {path}: file not found; pass a YAML file such as recipes/configs/samsum.yaml."
        )
    text = read_text(require_regular_file(file, "--config file"))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            _refuse_duplicate_keys(root, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path} must hold a mapping of argument names to values, not a {type(data).__name__}."
        )
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    unknown = sorted(str(key) for key in data if key not in actions)
    if unknown:
        raise ValueError(
            f"--config {path}: unknown key(s) {unknown}; keys are the command-line argument names without "
            "'--' (see --help)."
        )
    lines = {node.value: node.start_mark.line + 1 for node, _ in root.value}
    hints = _type_hints(dataclass_types)
    values = {
        key: _converted(actions[key], hints.get(key), value, f"--config {path} line {lines.get(key, '?')}: {key}")
        for key, value in data.items()
    }
    return values, {key: f"from --config {path} line {lines.get(key, '?')}" for key in data}


def _refuse_duplicate_keys(node: yaml.Node, path: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ValueError(
                    f"--config {path}: key {key_node.value!r} is given twice, at lines {seen[key]} and {line}; "
                    "keep one of them."
                )
            seen[key] = line
            _refuse_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path)


def _type_hints(dataclass_types: Sequence[type]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for dtype in dataclass_types:
        resolved = typing.get_type_hints(dtype)
        hints.update({f.name: resolved.get(f.name) for f in fields(dtype)})
    return hints


def _accepted(hint: Any) -> set[type]:
    """The plain types a field's annotation admits (``int | None`` -> {int, NoneType})."""
    if hint is None:
        return {str}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_accepted(arg) for arg in typing.get_args(hint)))
    if origin is typing.Literal:
        return {type(arg) for arg in typing.get_args(hint)}
    if origin is not None:
        return {origin}
    if isinstance(hint, type) and issubclass(hint, Enum):
        return {str}
    return {hint} if isinstance(hint, type) else {str}


def _list_item_hint(hint: Any) -> Any:
    """``str`` for ``list[str]`` (also inside ``list[str] | None``); ``None`` (text) when unknown."""
    if typing.get_origin(hint) is list:
        return (typing.get_args(hint) or (None,))[0]
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if typing.get_origin(arg) is list:
            return _list_item_hint(arg)
    return None


def _converted(action: argparse.Action, hint: Any, value: Any, where: str) -> Any:
    accepted = _accepted(hint)
    if value is None:
        if type(None) in accepted:
            return None
        raise ValueError(f"{where}: null is not a value here; give {_kind(accepted)} or remove the key.")
    if isinstance(value, Mapping):
        if dict in accepted:
            return value
        raise ValueError(f"{where}: a mapping is not a value here; give {_kind(accepted)}.")
    if isinstance(value, list):
        if action.nargs in ("+", "*") or list in accepted:
            items = _accepted(_list_item_hint(hint)) - {type(None)}
            return [_scalar(action, items, item, f"{where}[{i}]") for i, item in enumerate(value)]
        raise ValueError(f"{where}: a list is not a value here; give a single value ({_kind(accepted)}).")
    if action.nargs in ("+", "*"):
        raise ValueError(f"{where}: give a list (e.g. [{value}]), not a single value.")
    return _scalar(action, accepted, value, where)


def _scalar(action: argparse.Action, accepted: set[type], value: Any, where: str) -> Any:
    numeric = accepted & {int, float}
    if isinstance(value, bool):
        if bool not in accepted:
            raise ValueError(f"{where}: {value!r} is a boolean, not {_kind(accepted)}.")
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a value; give a finite number.")
        if isinstance(value, float) and float not in accepted:
            raise ValueError(f"{where}: {value!r} is not a whole number; give an integer.")
        if not numeric:
            raise ValueError(f"{where}: {value!r} is a number, not {_kind(accepted)}; quote it if you mean text.")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where}: {value!r} ({type(value).__name__}) is not {_kind(accepted)}.")
    convert = action.type or str
    try:
        converted = convert(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise ValueError(f"{where}: {value!r} is not {_kind(accepted)} ({err}).") from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise ValueError(f"{where}: {value!r} is not a value; give a finite number.")
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(action.choices)}.")
    return converted


def _kind(accepted: set[type]) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping", list: "list"}
    if float in accepted:
        accepted = accepted - {int}
    kinds = " or ".join(names[t] for t in names if t in accepted) or "value"
    return ("an " if kinds[0] in "aeiou" else "a ") + kinds


# --- ranges and where a value came from ---------------------------------------------------
def given_on_command_line(action: argparse.Action, argv: Sequence[str]) -> bool:
    """Whether ``argv`` sets ``action`` (``--name value`` or ``--name=value``)."""
    return any(arg == opt or arg.startswith(opt + "=") for arg in argv for opt in action.option_strings)


def check_ranges(namespace: argparse.Namespace, dataclass_types: Sequence[type], origins: Mapping[str, str]) -> None:
    """Refuse the first parsed value outside its field's range, naming the argument and its YAML origin."""
    for dtype in dataclass_types:
        for f in fields(dtype):
            allowed = RANGES.get(f.name)
            value = getattr(namespace, f.name, None)
            if allowed is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            problem = allowed.problem(value)
            if problem is not None:
                origin = f" ({origins[f.name]})" if f.name in origins else ""
                raise ValueError(f"--{f.name} {value}{origin}: out of range, {problem}.")


def with_origin(message: str, origins: Mapping[str, str]) -> str:
    """``message`` plus where each YAML-given argument it names came from."""
    named = [f"{key} {origin}" for key, origin in origins.items() if re.search(rf"\b{re.escape(key)}\b", message)]
    return f"{message} ({'; '.join(named)})" if named else message
