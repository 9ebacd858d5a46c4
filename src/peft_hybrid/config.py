"""`HybridConfig`: what an adapter is, validated once and saved as versioned JSON.

`InferenceSettings` (the config's ``inference``) records how the run that saved an adapter turned
raw inputs into encoder inputs and generated its answers, so that every reader of the folder
(`peft_hybrid.inference`) scores and predicts exactly as the run's own evaluation did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from peft_hybrid import __version__

MODES = ("none", "prompt", "lora", "hybrid", "full")
PROMPT_INITS = ("sample_vocab", "text", "random")
# Version of the on-disk adapter format. Bump when a saved folder changes meaning.
# 2: `inference` (how the run formatted inputs and generated); format-1 folders load without it.
FORMAT_VERSION = 2
# Not PEFT's adapter_config.json: transformers and PEFT would take the folder for a PEFT adapter
# of an unknown type and fail, where a fully fine-tuned folder should load with transformers alone.
CONFIG_NAME = "hybrid_config.json"
# Written beside the fields; `weights_sha256` ties the config to the weights saved with it.
_METADATA_KEYS = ("format_version", "library", "library_version", "peft_type", "weights_sha256")
# Fields that are not adapter settings: how the prompt was initialised and where the adapter came
# from. Every other field is a setting (`ADAPTER_FIELDS`), so a new field shows up in cards,
# training summaries and ablation tables unless it is listed here on purpose.
_NOT_SETTINGS = (
    "prompt_init_text",
    "seed",
    "base_model_name_or_path",
    "revision",
    "base_model_shape",
    "base_quantization",
    "task",
    "inference",
)
_JSON_SCALARS = (str, int, float, bool, type(None))
# Saved ``generate`` arguments checked by kind, so that a hand-edited value is refused at load,
# naming it, instead of failing deep inside ``generate`` (a string cap, ``num_beams: 0``).
_POSITIVE_INTS = ("max_new_tokens", "max_length", "num_beams", "num_beam_groups", "num_return_sequences")
_NON_NEGATIVE_INTS = ("min_new_tokens", "min_length", "top_k", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size")
_POSITIVE_NUMBERS = ("temperature", "repetition_penalty", "encoder_repetition_penalty")
_UNIT_NUMBERS = ("top_p", "typical_p", "min_p")  # in (0, 1]
_NUMBERS = ("length_penalty", "diversity_penalty", "epsilon_cutoff", "eta_cutoff")
_BOOLEANS = ("do_sample", "use_cache", "renormalize_logits", "remove_invalid_values")
# Keys that change what generate returns (several sequences, a dict): every reader expects one
# sequence of tokens per input.
_OUTPUT_SHAPING = (
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
)


@dataclass
class InferenceSettings:
    """How a run turned raw inputs into encoder inputs and generated: saved with its adapter.

    Attributes:
        task_prefix: the explicit input prefix the run used (``None``: none given, so the task tag
            rule below decides).
        use_task_tags: whether the task's tag was prepended (``None``: the mode's default,
            `HybridConfig.uses_task_tags`).
        max_source_length: input tokens kept (longer inputs were truncated).
        generation: the ``generate`` keyword arguments the run's evaluation used (``max_new_tokens``,
            ``num_beams``, ...), plain JSON values.

    Example:
        >>> settings = InferenceSettings(task_prefix="review: ", max_source_length=64)
        >>> HybridConfig(inference=settings).to_dict()["inference"]["task_prefix"]
        'review: '
    """

    task_prefix: str | None = None
    use_task_tags: bool | None = None
    max_source_length: int | None = None
    generation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task_prefix is not None and not isinstance(self.task_prefix, str):
            raise ValueError(f"inference.task_prefix={self.task_prefix!r} must be a string or null.")
        if self.use_task_tags is not None and not isinstance(self.use_task_tags, bool):
            raise ValueError(f"inference.use_task_tags={self.use_task_tags!r} must be true, false or null.")
        length = self.max_source_length
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length <= 0):
            raise ValueError(f"inference.max_source_length={length!r} must be a positive integer or null.")
        if not isinstance(self.generation, dict):
            raise ValueError(f"inference.generation={self.generation!r} must be an object of generate() arguments.")
        for key, value in self.generation.items():
            if not isinstance(key, str) or not isinstance(value, _JSON_SCALARS):
                raise ValueError(
                    f"inference.generation[{key!r}]={value!r}: generate() arguments are saved as plain JSON values "
                    "(numbers, strings, booleans, null)."
                )
            problem = _generation_problem(key, value)
            if problem is not None:
                raise ValueError(f"inference.generation[{key!r}]={value!r}: {problem}")

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> InferenceSettings:
        """Rebuild from the saved object; refuses unknown keys, naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: 'inference' must be an object, not {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source} has unknown field(s) {unknown} in 'inference'; valid fields are {sorted(known)}."
            )
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None


def _generation_problem(key: str, value: Any) -> str | None:
    """What is wrong with one saved ``generate`` argument, or ``None``."""
    from transformers import GenerationConfig

    if key in _OUTPUT_SHAPING or (key == "num_return_sequences" and value != 1):
        return "an adapter's saved settings generate one sequence per input; remove this key."
    if key not in GenerationConfig().to_dict() or key.startswith("_"):
        return "not a generate() argument; remove it or fix its spelling."
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in _POSITIVE_INTS and not (_is_int(value) and value > 0):
        return "must be a positive integer."
    if key in _NON_NEGATIVE_INTS and not (_is_int(value) and value >= 0):
        return "must be an integer >= 0."
    if key in _POSITIVE_NUMBERS and not (number and value > 0):
        return "must be a number > 0."
    if key in _UNIT_NUMBERS and not (number and 0 < value <= 1):
        return "must be a number in (0, 1]."
    if key in _NUMBERS and not number:
        return "must be a number."
    if key in _BOOLEANS and not isinstance(value, bool):
        return "must be true or false."
    if key == "early_stopping" and value not in (True, False, "never"):
        return 'must be true, false or "never".'
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class HybridConfig:
    """Configuration of a hybrid LoRA + soft prompt adapter.

    Defaults are the paper's: LoRA r=4, alpha=4 on the attention projections ``q`` and ``v`` with
    dropout 0.05, plus 30 soft prompt tokens prepended to the encoder input, initialised from
    sampled vocabulary embeddings.

    ``mode`` picks the row of the paper's ablation: ``"none"`` (the untouched base), ``"prompt"``,
    ``"lora"``, ``"hybrid"`` (both), or ``"full"`` (every base weight trains; no adapter parts).

    Example:
        >>> from peft_hybrid import HybridConfig
        >>> HybridConfig(mode="lora").uses_prompt
        False
    """

    mode: str = field(default="hybrid", metadata={"help": f"One of {MODES}."})
    # LoRA
    r: int = field(default=4, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=4, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q", "v"], metadata={"help": "Names of the Linear modules that get LoRA."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    use_dora: bool = field(default=False, metadata={"help": "DoRA: LoRA plus a trained magnitude per output channel."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA: scale = alpha / sqrt(r)."})
    rank_pattern: dict[str, int] = field(default_factory=dict, metadata={"help": "Per-module r (PEFT's)."})
    alpha_pattern: dict[str, float] = field(default_factory=dict, metadata={"help": "Per-module alpha (PEFT's)."})
    # Soft prompt
    num_virtual_tokens: int = field(default=30, metadata={"help": "Soft prompt length (encoder side)."})
    prompt_init: str = field(default="sample_vocab", metadata={"help": f"One of {PROMPT_INITS}."})
    prompt_init_text: str | None = field(default=None, metadata={"help": "Text for prompt_init='text'."})
    seed: int = field(default=42, metadata={"help": "Seed for the prompt initialisation."})
    # Provenance
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "Base model Hub id or folder."})
    revision: str | None = field(default=None, metadata={"help": "Revision of the base model."})
    base_model_shape: dict[str, int] | None = field(
        default=None, metadata={"help": "Filled in by HybridModel; used to refuse a mismatched base."}
    )
    base_quantization: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "How the base was quantized in training (None: full precision); filled in by HybridModel."},
    )
    task: str | None = field(default=None, metadata={"help": "Task the adapter was trained for, if any."})
    inference: InferenceSettings | None = field(
        default=None, metadata={"help": "How the saving run formatted inputs and generated (filled by the trainer)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.inference, dict):
            self.inference = InferenceSettings.from_dict(self.inference)
        self._check_types()
        if self.mode not in MODES:
            raise ValueError(f"HybridConfig.mode={self.mode!r} is not valid; choose one of {', '.join(MODES)}.")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(
                f"HybridConfig.prompt_init={self.prompt_init!r} is not valid; choose one of {', '.join(PROMPT_INITS)}."
            )
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        if self.uses_lora:
            self._check_lora()
        elif self.use_dora:
            raise ValueError(
                f"HybridConfig.use_dora=True needs a mode with LoRA ('lora' or 'hybrid'), not {self.mode!r}: DoRA is "
                "a kind of LoRA. Drop use_dora or pick mode 'lora'/'hybrid'."
            )
        if self.uses_prompt:
            if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens <= 0:
                raise ValueError(
                    f"HybridConfig.num_virtual_tokens={self.num_virtual_tokens!r}: mode {self.mode!r} uses a soft "
                    "prompt, so it must be a positive integer (the paper uses 30)."
                )
            if self.prompt_init == "text" and not self.prompt_init_text:
                raise ValueError(
                    "HybridConfig.prompt_init='text' needs prompt_init_text, the text whose embeddings start the "
                    "prompt."
                )

    def _check_lora(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(
                f"HybridConfig.r={self.r!r}: mode {self.mode!r} uses LoRA, so r must be a positive integer "
                "(the paper uses 4)."
            )
        if not self.lora_alpha or self.lora_alpha <= 0:
            raise ValueError(f"HybridConfig.lora_alpha={self.lora_alpha!r} must be > 0 (the paper uses 4).")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"HybridConfig.lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError("HybridConfig.target_modules must be a non-empty list of module names, e.g. ['q', 'v'].")
        for name in ("use_dora", "use_rslora"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"HybridConfig.{name}={getattr(self, name)!r} must be true or false.")
        for name, number in (("rank_pattern", int), ("alpha_pattern", (int, float))):
            pattern = getattr(self, name)
            if not isinstance(pattern, dict) or not all(
                isinstance(k, str) and k and isinstance(v, number) and not isinstance(v, bool) and v > 0
                for k, v in pattern.items()
            ):
                raise ValueError(
                    f"HybridConfig.{name}={pattern!r} must map module names (or patterns) to positive numbers, "
                    'e.g. {"q": 8}.'
                )

    def _check_types(self) -> None:
        """Refuse a value of the wrong JSON type (a hand-edited config), naming the field, before any use."""
        for name in ("prompt_init_text", "base_model_name_or_path", "revision", "task"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"HybridConfig.{name}={value!r} must be a string or null.")
        for name in ("r", "num_virtual_tokens", "seed"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"HybridConfig.{name}={getattr(self, name)!r} must be an integer.")
        for name in ("lora_alpha", "lora_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"HybridConfig.{name}={value!r} must be a number.")
        shape = self.base_model_shape
        if shape is not None and (
            not isinstance(shape, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in shape.items())
        ):
            raise ValueError(f"HybridConfig.base_model_shape={shape!r} must be an object of integer sizes or null.")

    # --- the mode's derived facts: the one place that reads `mode` for what it implies ----------
    @property
    def uses_lora(self) -> bool:
        return self.mode in ("lora", "hybrid")

    @property
    def uses_prompt(self) -> bool:
        return self.mode in ("prompt", "hybrid")

    @property
    def part_kinds(self) -> tuple[str, ...]:
        """The adapter parts this config gives, in card order (`peft_hybrid.modeling.parts`)."""
        lora = ("dora" if self.use_dora else "lora",) if self.uses_lora else ()
        return lora + (("prompt",) if self.uses_prompt else ())

    @property
    def trains_base(self) -> bool:
        return self.mode == "full"

    @property
    def has_trainable_parameters(self) -> bool:
        """False for mode ``none`` only: the untouched base, evaluated but never trained."""
        return self.mode != "none"

    @property
    def uses_task_tags(self) -> bool:
        """Whether inputs carry the task's hand-written tag unless the user says otherwise.

        Only full fine-tuning, as in the paper: the PEFT modes learn the instruction (the soft
        prompt) or adapt a frozen base that never saw the tag in that role.
        """
        return self.trains_base

    def adapter_settings(self) -> dict[str, Any]:
        """The fields in `ADAPTER_FIELDS` and their values, for cards and run summaries.

        Example:
            >>> HybridConfig(mode="lora", r=8).adapter_settings()["r"]
            8
        """
        data = asdict(self)  # copies, so a caller's edit cannot reach the config
        return {name: data[name] for name in ADAPTER_FIELDS}

    @property
    def has_adapter_tensors(self) -> bool:
        """Whether the adapter's weights file holds anything (a LoRA or a prompt part)."""
        return self.uses_lora or self.uses_prompt

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict with format/library metadata, ready for JSON."""
        data = asdict(self)
        data.update(
            format_version=FORMAT_VERSION,
            library="peft_hybrid",
            library_version=__version__,
            peft_type="HYBRID_LORA_PROMPT",
        )
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> HybridConfig:
        """Build from a saved dict; refuses newer formats and unknown fields, saying where."""
        data = dict(data)
        version = data.get("format_version", FORMAT_VERSION)
        if not _is_int(version) or version < 1:
            raise ValueError(
                f"{source}: format_version={version!r} is not an adapter format (a positive integer, 1 to "
                f"{FORMAT_VERSION}); the file was edited or damaged. Save or download the adapter again."
            )
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source} was written by peft_hybrid {data.get('library_version', '?')} in adapter format "
                f"{version!r}; this peft_hybrid {__version__} reads format {FORMAT_VERSION} or older. "
                "Upgrade with `pip install -U peft-hybrid`."
            )
        if data.get("library", "peft_hybrid") != "peft_hybrid":
            raise ValueError(f"{source} is not a peft_hybrid adapter config (library={data.get('library')!r}).")
        for key in _METADATA_KEYS:
            data.pop(key, None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source} has unknown field(s) {unknown}; valid fields are {sorted(known)}.")
        if data.get("inference") is not None:
            data["inference"] = InferenceSettings.from_dict(data["inference"], source)
        try:
            return cls(**data)
        except ValueError as err:  # a field's own message, with the file it came from
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> HybridConfig:
        """Read ``hybrid_config.json`` from a folder (or the file itself)."""
        path = config_path(path)
        return cls.from_dict(read_config_dict(path), source=str(path))


# The settings that define what an adapter computes, in field order.
ADAPTER_FIELDS = tuple(f.name for f in fields(HybridConfig) if f.name not in _NOT_SETTINGS)


def config_path(path: str | Path) -> Path:
    path = Path(path)
    return path / CONFIG_NAME if path.is_dir() else path


def read_config_dict(path: str | Path) -> dict[str, Any]:
    """The raw JSON of an adapter config, with errors that name the file."""
    path = config_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is this a folder saved by HybridModel.save_pretrained?")
    try:
        # utf-8-sig: a byte-order mark (some Windows editors add one) is not damage.
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the adapter folder is damaged, save it again.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object.")
    return data
