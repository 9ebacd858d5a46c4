"""Fast generation: a static KV cache and a compiled decoder step, with batches bucketed to fixed shapes.

``with fast_generation(model): model.generate(...)`` makes every ``generate`` call inside the block
run transformers' static encoder-decoder cache (``cache_implementation="static"``) with the
decoder step ``torch.compile``d (CUDA graphs on a GPU through ``mode="reduce-overhead"``), and the
encoder compiled too: it runs once per batch, on the soft-prompt-extended input. It works from
the outside of any seq2seq model whose ``generate`` ends in a transformers encoder-decoder
(`HybridModel`, a stock PEFT model, a plain ``T5ForConditionalGeneration``), so the same fast path
serves the hybrid and the baselines it is compared with.

Why buckets: a compiled graph is specialised to its input shapes, and a KV cache of fixed size is
what makes the decoder step one graph for every token. Each call is padded up to a bucket
(`GenerationBuckets`): extra rows copy the first row (so they finish when it does and never make
the batch generate longer), extra source positions get attention mask 0 (T5's attention gives
them weight exactly 0, so the real rows' tokens are unchanged), and the self-attention cache is
sized to the generation cap rounded up. Two batches in one bucket reuse the same graphs; a new
bucket compiles once more, then dynamo's automatic dynamic shapes cover further buckets.

Mixed batches (``generate(..., adapter_names=[...])``) compile too: the per-row LoRA hooks
(`peft_hybrid.modeling.mixed.RowLora`) run inside the graphs on tensors gathered before them,
shaped by the model's adapters, not the batch's mix; the encoder input is padded to the source
bucket plus the longest loaded soft prompt, whichever prompts the rows carry.

The compiled callables are cached per model (weakly), so a second block reuses the compile. On
exit the model's ``generate`` and the modules' call paths are put back as they were.

Example:
    >>> import torch
    >>> from peft_hybrid import HybridConfig, HybridModel, fast_generation
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(), tokenizer=tokenizer).eval()
    >>> batch = tokenizer(["Amy: see you at 5?", "Tom: late again"], return_tensors="pt", padding=True)
    >>> eager = model.generate(**batch, max_new_tokens=4)
    >>> with fast_generation(model, backend="eager"):  # "inductor" (the default) for real speed
    ...     fast = model.generate(**batch, max_new_tokens=4)
    >>> torch.equal(fast, eager)
    True
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peft_hybrid.inference import _internals

__all__ = ["GenerationBuckets", "compiled_step", "fast_generation"]

_RECOMPILE_LIMIT = 64

# Arguments the fast path sets itself or cannot pad per row; each is refused with what to do.
_REFUSED = {
    "inputs_embeds": "pass input_ids (the fast path pads token ids up to its buckets)",
    "decoder_input_ids": "every row starts from the decoder start token here; generate outside the block",
    "cache": "the fast path brings its own static cache",
    "past_key_values": "the fast path brings its own static cache",
    "compile_config": "fast_generation(..., backend=, mode=) sets the compile",
    "max_cache_len": "the cache length is GenerationBuckets.cache_length of the generation cap",
}


@dataclass(frozen=True)
class GenerationBuckets:
    """The shapes the fast path pads each ``generate`` call up to.

    - ``batch_sizes``: rows are padded to the smallest size listed that holds them; above the
      largest, to a multiple of it. Powers of two keep the waste under 2x for a last, partial
      batch, while a sweep at a fixed batch size (evaluation, the benchmarks) never pads.
    - ``length_multiple``: source tokens (before the soft prompt) are padded to a multiple of
      it: at most ``length_multiple - 1`` masked positions per row, and a 512-token cap makes
      at most 8 source buckets.
    - ``cache_multiple``: the decoder's self-attention cache holds the generation cap rounded
      up to a multiple of it, so nearby ``max_new_tokens`` share one graph. Every step attends
      over the whole cache (masked), so this is kept small.

    Example:
        >>> b = GenerationBuckets()
        >>> b.batch(5), b.batch(16), b.batch(100), b.source_length(200), b.cache_length(33)
        (8, 16, 128, 256, 64)
    """

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    length_multiple: int = 64
    cache_multiple: int = 32

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"GenerationBuckets(batch_sizes={self.batch_sizes}): pass positive sizes.")
        object.__setattr__(self, "batch_sizes", tuple(sorted({int(b) for b in self.batch_sizes})))
        for name in ("length_multiple", "cache_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"GenerationBuckets({name}={getattr(self, name)}): pass a positive multiple.")

    def batch(self, rows: int) -> int:
        """The padded row count for ``rows`` input rows."""
        for size in self.batch_sizes:
            if rows <= size:
                return size
        return _round_up(rows, self.batch_sizes[-1])

    def source_length(self, length: int) -> int:
        """The padded source length (token positions before the soft prompt)."""
        return _round_up(max(length, 1), self.length_multiple)

    def cache_length(self, max_length: int) -> int:
        """The self-attention cache length for a generation cap of ``max_length`` decoder tokens."""
        return _round_up(max(max_length, 1), self.cache_multiple)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@contextlib.contextmanager
def fast_generation(
    model: nn.Module,
    *,
    backend: str = "inductor",
    mode: str | None = None,
    buckets: GenerationBuckets | None = None,
) -> Iterator[nn.Module]:
    """Inside the block, ``model.generate`` runs a static KV cache and compiled encoder/decoder steps.

    Tokens equal the eager ``generate``'s in fp32, greedy and beam search alike. The first decoder
    step of each call (the prefill, which fills the cross-attention cache) runs eagerly, as
    transformers' own compiled generation does; every later step runs the compiled graph.

    Args:
        model: a `HybridModel`, a stock PEFT seq2seq model or a transformers encoder-decoder.
            Combine with `peft_hybrid.inference.merged_lora` to decode with plain Linears; unmerged
            LoRA layers and mixed batches (``generate(..., adapter_names=[...])``) compile too.
        backend: ``torch.compile`` backend; ``"eager"`` only traces (quick, for tests).
        mode: ``torch.compile`` mode; default ``"reduce-overhead"`` (CUDA graphs) on a GPU, the
            default mode elsewhere.
        buckets: the padded shapes (`GenerationBuckets`); a server fills its batches up to
            ``buckets.batch_sizes``.

    Inside the block ``generate`` needs ``input_ids`` and ``attention_mask`` and returns token
    ids (``return_dict_in_generate`` is refused); everything else passes through.

    Raises:
        TypeError: no transformers encoder-decoder found inside ``model``.
        RuntimeError: ``model`` is already inside a ``fast_generation`` block.
    """
    generator = _generator_of(model)
    if "generate" in vars(model):
        raise RuntimeError(
            f"{type(model).__name__}.generate is already replaced (a fast_generation block is open on this model); "
            "leave that block first."
        )
    buckets = buckets or GenerationBuckets()
    compiled = _compiled_for(generator, backend, _default_mode(generator, mode))
    encoder, decoder = generator.get_encoder(), generator.get_decoder()
    state = _CallState()
    routes = {
        generator: functools.partial(_dispatch_step, state, generator, compiled.step),
        encoder: functools.partial(_dispatch_encoder, state, encoder, compiled.encoder),
        decoder: None,  # a compile_model'd stack: the step graph already covers it
    }
    model.generate = functools.wraps(model.generate)(
        functools.partial(_fast_generate, model, model.generate, generator, buckets, state)
    )
    try:
        with _internals.routed_calls(routes), _internals.static_cache_memo_kept(generator):
            yield model
    finally:
        del model.generate


def compiled_step(generator: nn.Module, *, backend: str = "inductor", mode: str | None = None) -> Callable[..., Any]:
    """`fast_generation`'s compiled decoder step of ``generator``, called ``step(generator, **forward)``: for
    callers that drive the decoder themselves (`peft_hybrid.serve.slotbatch`); ``mode=None``: CUDA graphs on a GPU."""
    return _compiled_for(generator, backend, _default_mode(generator, mode)).step


def _default_mode(generator: nn.Module, mode: str | None) -> str | None:
    return "reduce-overhead" if mode is None and generator.device.type == "cuda" else mode


@dataclass
class _Compiled:
    step: Callable[..., Any]
    encoder: Callable[..., Any]


# transformers model -> {(backend, mode): compiled module calls (`_internals.compile_module_call`)}:
# they hold no reference to the model, so the entry goes when the model does.
_REGISTRY: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str | None], _Compiled]] = weakref.WeakKeyDictionary()


def _compiled_for(generator: nn.Module, backend: str, mode: str | None) -> _Compiled:
    per_model = _REGISTRY.setdefault(generator, {})
    key = (backend, mode)
    if key not in per_model:
        # dynamic=None: each bucket starts as a static graph; a second bucket marks the dimension
        # that changed as dynamic, so further buckets need no compile at all.
        options = dict(backend=backend, mode=mode, dynamic=None, fullgraph=False)
        per_model[key] = _Compiled(*(_internals.compile_module_call(**options) for _ in range(2)))
    return per_model[key]


@dataclass
class _CallState:
    """Whether a fast ``generate`` call is running, and whether its prefill step is still to come."""

    active: bool = False
    prefill_pending: bool = False


def _dispatch_step(state: _CallState, module: nn.Module, compiled: Callable, *args: Any, **kwargs: Any) -> Any:
    # Outside a fast call (e.g. the Trainer's eval loss) the model runs as usual. The prefill
    # runs eagerly: it allocates the static cache, whose tensors must be created outside a graph
    # to keep fixed addresses (what CUDA graphs replay against).
    if not state.active or state.prefill_pending:
        state.prefill_pending = False
        return _internals.eager_call(module, *args, **kwargs)
    return compiled(module, *args, **kwargs)


def _dispatch_encoder(state: _CallState, module: nn.Module, compiled: Callable, *args: Any, **kwargs: Any) -> Any:
    return compiled(module, *args, **kwargs) if state.active else _internals.eager_call(module, *args, **kwargs)


def _fast_generate(
    model: nn.Module,
    original: Callable[..., torch.Tensor],
    generator: nn.Module,
    buckets: GenerationBuckets,
    state: _CallState,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    _check_arguments(generator, input_ids, attention_mask, kwargs)
    rows, length = input_ids.shape
    padded_rows = buckets.batch(rows)
    ids, mask = _pad(input_ids, attention_mask, padded_rows, buckets.source_length(length), _pad_id(generator))
    if kwargs.get("adapter_names") is not None:  # per-row adapters: padded rows use the first row's
        kwargs["adapter_names"] = [*kwargs["adapter_names"], *kwargs["adapter_names"][:1] * (padded_rows - rows)]
    if kwargs.get("prefix_allowed_tokens_fn") is not None:  # a padded row copies row 0: constrain it as row 0
        allowed = kwargs["prefix_allowed_tokens_fn"]
        kwargs["prefix_allowed_tokens_fn"] = lambda batch_id, ids: allowed(batch_id if batch_id < rows else 0, ids)
    cache_len = buckets.cache_length(_generation_cap(generator, kwargs))
    state.active, state.prefill_pending = True, True
    # Models of one architecture share one code cache (parameters are graph inputs), so dynamo's
    # default of 8 entries is too few for a few models x buckets; each entry is a bucket.
    try:
        with _internals.recompile_limit(_RECOMPILE_LIMIT), _fixed_encoder(model, generator, ids):
            out = original(
                input_ids=ids,
                attention_mask=mask,
                cache_implementation="static",
                max_cache_len=cache_len,
                disable_compile=True,  # the compile is ours (transformers' own skips beam search and CPUs)
                **kwargs,
            )
    finally:
        state.active = state.prefill_pending = False
    per_row = kwargs.get("num_return_sequences") or _config(generator, kwargs).num_return_sequences or 1
    return _trim(out[: rows * per_row], _eos_ids(generator, kwargs))


@contextlib.contextmanager
def _fixed_encoder(model: nn.Module, generator: nn.Module, ids: torch.Tensor) -> Iterator[None]:
    """The encoder input reaching the generator padded to the source bucket plus the longest soft prompt.

    A mixed batch's rows carry their own prompts (`peft_hybrid.modeling.prompt.prepend_per_row`),
    so its encoder input is as long as its longest row, which changes batch to batch, and every
    graph with it. The extra positions go at the end with attention mask 0, like the source padding.
    """
    longest = max((p.num_virtual_tokens for p in getattr(model, "prompts", {}).values()), default=0)
    if not longest or model is generator or "generate" in vars(generator):
        yield
        return
    target = ids.shape[1] + longest

    def generate(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("input_ids") is not None:  # no row has a prompt: embedded, to share the graph
            kwargs["inputs_embeds"] = generator.get_input_embeddings()(kwargs.pop("input_ids"))
        inputs, mask = kwargs["inputs_embeds"], kwargs["attention_mask"]
        extra = target - inputs.shape[1]
        if extra > 0:
            kwargs["inputs_embeds"] = torch.cat([inputs, inputs.new_zeros((len(inputs), extra, inputs.shape[2]))], 1)
            kwargs["attention_mask"] = torch.cat([mask, mask.new_zeros((len(mask), extra))], 1)
        return type(generator).generate(generator, *args, **kwargs)

    generator.generate = generate
    try:
        yield
    finally:
        del generator.generate


def _check_arguments(generator: nn.Module, input_ids: Any, attention_mask: Any, kwargs: dict[str, Any]) -> None:
    for name, advice in _REFUSED.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"fast_generation: generate({name}=...) is not supported: {advice}.")
    implementation = kwargs.pop("cache_implementation", None)
    if implementation not in (None, "static"):
        raise ValueError(
            f"fast_generation: generate(cache_implementation={implementation!r}): the fast path uses the static "
            "cache; leave cache_implementation unset inside the block."
        )
    if kwargs.get("return_dict_in_generate", _config(generator, kwargs).return_dict_in_generate):
        raise ValueError(
            "fast_generation: return_dict_in_generate=True is not supported (scores would include the rows padded "
            "up to the bucket); it returns token ids. Generate outside the block for scores."
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("fast_generation: generate needs input_ids, a (batch, length) tensor of token ids.")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(
            "fast_generation: generate needs the attention_mask of input_ids (same shape; the tokenizer returns it), "
            "so that the positions padded up to the bucket can be masked."
        )
    names = kwargs.get("adapter_names")
    if names is not None and len(names) != input_ids.shape[0]:
        raise ValueError(
            f"fast_generation: adapter_names has {len(names)} entries for {input_ids.shape[0]} rows; pass one per row."
        )


def _config(generator: nn.Module, kwargs: dict[str, Any]) -> Any:
    return kwargs.get("generation_config") or generator.generation_config


def _pad_id(generator: nn.Module) -> int:
    pad = generator.generation_config.pad_token_id
    pad = generator.config.pad_token_id if pad is None else pad
    if pad is None:
        raise ValueError("fast_generation: the model has no pad_token_id to pad source positions with; set one.")
    return int(pad)


def _pad(ids: torch.Tensor, mask: torch.Tensor, rows: int, length: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """Rows padded with copies of row 0 (they finish when it does), columns with masked pad tokens."""
    extra_rows = rows - ids.shape[0]
    if extra_rows:
        ids = torch.cat([ids, ids[:1].expand(extra_rows, -1)])
        mask = torch.cat([mask, mask[:1].expand(extra_rows, -1)])
    extra_cols = length - ids.shape[1]
    if extra_cols:
        ids = torch.cat([ids, ids.new_full((rows, extra_cols), pad_id)], dim=1)
        mask = torch.cat([mask, mask.new_zeros((rows, extra_cols))], dim=1)
    return ids, mask


def _generation_cap(generator: nn.Module, kwargs: dict[str, Any]) -> int:
    """Decoder tokens one call may reach (start token included), as transformers sizes its cache."""
    config = _config(generator, kwargs)
    new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
    if new_tokens is not None:
        return int(new_tokens) + 1
    return int(kwargs.get("max_length") or config.max_length or 20)


def _eos_ids(generator: nn.Module, kwargs: dict[str, Any]) -> list[int]:
    eos = kwargs.get("eos_token_id", _config(generator, kwargs).eos_token_id)
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, Sequence | torch.Tensor) else [eos])]


def _trim(sequences: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """Cut the columns that only the padded rows generated: eager generation stops when every real
    row has produced its end-of-sequence token (position 0 is the decoder start token)."""
    if not eos_ids or sequences.shape[1] <= 1:
        return sequences
    ends = torch.isin(sequences[:, 1:], torch.tensor(eos_ids, device=sequences.device))
    if not bool(ends.any(dim=1).all()):
        return sequences  # some real row ran to the cap: so did eager generation
    last = int(ends.int().argmax(dim=1).max()) + 2
    return sequences[:, :last]


def _generator_of(model: nn.Module) -> nn.Module:
    """The transformers encoder-decoder whose ``generate`` does the decoding inside ``model``."""
    from transformers import PreTrainedModel

    found = model
    for _ in range(4):  # HybridModel.base_model; PeftModel.get_base_model(); the model itself
        if isinstance(found, PreTrainedModel):
            break
        inner = found.get_base_model() if hasattr(found, "get_base_model") else getattr(found, "base_model", None)
        if not isinstance(inner, nn.Module) or inner is found:
            break
        found = inner
    if not (isinstance(found, PreTrainedModel) and found.config.is_encoder_decoder):
        raise TypeError(
            f"fast_generation needs a seq2seq model that generates through a transformers encoder-decoder "
            f"(T5ForConditionalGeneration, a HybridModel or a PEFT model of one); got {type(model).__name__}."
        )
    return found
