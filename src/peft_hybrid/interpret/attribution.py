"""Integrated Gradients attribution of a seq2seq model's generated tokens to its encoder input.

For each output token ``y_t`` (generated greedily, or taken from a given target text) we explain
the teacher-forced log-probability ``f_t(e) = log p(y_t | e, y_<t)`` with Integrated Gradients
(Captum's ``IntegratedGradients``) with respect to ``e``, the embeddings the encoder sees. With a
soft prompt, ``e`` is the prompt-extended input ``[P1..Pn; x]``, so the learned prompt gets rows
of its own and one can read how much it drives each output token.

Why not Captum's ``LLMAttribution``: it assumes a decoder-only model. Why not attribute through
the embedding layer: T5 shares one embedding table between encoder and decoder, and a layer hook
on it would also perturb the decoder's input. Here the encoder gets ``inputs_embeds`` directly and
the decoder input stays token ids, so only the encoder side is interpolated.

Baseline: every row of ``e`` (prompt rows included) is replaced by the pad token's embedding
(``baseline="pad"``, the default) or by zeros (``baseline="zeros"``); the attention mask and the
decoder input are the same for input and baseline. Completeness then says that, per output token,
the row scores sum to ``f_t(e) - f_t(baseline)``; `AttributionResult.deltas` is the gap, and a
warning is raised when it exceeds 5% of ``|f_t(e) - f_t(baseline)|``.

Prefer the pad baseline for T5: its RMS layer norm rescales any non-zero input, so along the path
from an all-zero input ``f`` jumps within a sliver of width ~1e-6 next to zero that no practical
number of steps resolves; completeness gaps from ``"zeros"`` are then as large as the
differences themselves.

The model runs in eval mode (no dropout) and float32 during attribution, and is put back as it
was afterwards. Captum and matplotlib come with the ``interpret`` extra.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_hybrid.inference.decoding import decode_texts
from peft_hybrid.interpret._model_io import (
    _base_of,
    _baseline_embeddings,
    _decoder_ids,
    _encoder_embeddings,
    _eval_float32,
    _LogProbs,
    _token_strings,
)

BASELINES = ("pad", "zeros")
_INSTALL_HINT = "pip install peft-hybrid[interpret]"
# Bumped when the JSON written by `AttributionResult.to_json` changes meaning.
_JSON_FORMAT = 1
_WARN_RELATIVE_ERROR = 0.05


def require_interpret(module: str):
    """Import an ``interpret`` extra dependency, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is needed for attribution heatmaps but is not installed: {_INSTALL_HINT}"
        ) from err


@dataclass
class AttributionResult:
    """Integrated Gradients scores: encoder input rows x generated tokens.

    Attributes:
        input_tokens: row labels: ``P1..Pn`` for the soft prompt, then the input's tokens
            (SentencePiece pieces as the tokenizer writes them, ``</s>`` included).
        output_tokens: column labels: the generated (or given) target tokens.
        scores: ``[len(input_tokens), len(output_tokens)]``, attribution of each row to the
            log-probability of each output token (summed over the embedding dimension).
        log_probs: ``f_t(x)``, the log-probability of each output token given the input.
        baseline_log_probs: ``f_t(baseline)``, the same with every row set to the baseline.
        deltas: ``sum(scores[:, t]) - (log_probs[t] - baseline_log_probs[t])``: the convergence
            gap of the integral (0 for an exact one).
        num_prompt_tokens: how many leading rows are soft prompt positions.
        input_ids, output_ids: the token ids behind the labels (prompt rows have none).
        text: the input text; output_text: the decoded output.
        baseline, n_steps, method: how the attribution was computed.

    `attribute` returns one; its example shows the fields and `to_json`.
    """

    input_tokens: list[str]
    output_tokens: list[str]
    scores: torch.Tensor
    log_probs: list[float]
    baseline_log_probs: list[float]
    deltas: list[float]
    num_prompt_tokens: int
    input_ids: list[int]
    output_ids: list[int]
    text: str
    output_text: str
    baseline: str
    n_steps: int
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_errors(self) -> list[float]:
        """``|delta_t| / |f_t(x) - f_t(baseline)|`` per output token (inf where the difference is 0)."""
        errors = []
        for delta, fx, fb in zip(self.deltas, self.log_probs, self.baseline_log_probs):
            gap = abs(fx - fb)
            errors.append(abs(delta) / gap if gap > 0 else (0.0 if delta == 0 else math.inf))
        return errors

    @property
    def prompt_share(self) -> list[float]:
        """Per output token, the soft prompt's share of the total absolute attribution."""
        magnitude = self.scores.abs()
        total = magnitude.sum(dim=0).clamp_min(torch.finfo(magnitude.dtype).tiny)
        return (magnitude[: self.num_prompt_tokens].sum(dim=0) / total).tolist()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = self.scores.tolist()
        data["relative_errors"] = self.relative_errors
        data["format_version"] = _JSON_FORMAT
        return data

    def to_json(self, path: str | Path) -> Path:
        """Write raw scores, token strings and completeness figures as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        # inf is not JSON; a zero gap with a non-zero delta is written as null.
        data["relative_errors"] = [e if math.isfinite(e) else None for e in data["relative_errors"]]
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> AttributionResult:
        """Read a file written by `to_json`."""
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("format_version", None) != _JSON_FORMAT:
            raise ValueError(
                f"{path} is not an attribution file of format {_JSON_FORMAT} written by AttributionResult.to_json."
            )
        data.pop("relative_errors", None)
        data["scores"] = torch.tensor(data["scores"], dtype=torch.float64).reshape(
            len(data["input_tokens"]), len(data["output_tokens"])
        )
        return cls(**data)

    def plot(self, **kwargs: Any):
        """The heatmap as a matplotlib ``Figure``; see `peft_hybrid.interpret.heatmap.plot_heatmap`."""
        from peft_hybrid.interpret.heatmap import plot_heatmap

        return plot_heatmap(self, **kwargs)


def attribute(
    model: nn.Module,
    tokenizer,
    text: str,
    *,
    target: str | None = None,
    n_steps: int = 50,
    baseline: str = "pad",
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    max_new_tokens: int = 32,
    generation_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> AttributionResult:
    """Integrated Gradients of each output token's log-probability w.r.t. the encoder input.

    Args:
        model: a `HybridModel` (any mode) or a plain T5-family ``*ForConditionalGeneration``.
        tokenizer: its tokenizer.
        text: the input text, exactly as the model is fed (add a task tag yourself if it uses one).
        target: explain this output text (teacher-forced) instead of the greedy generation.
        n_steps: integration steps (Gauss-Legendre by default: 50 is usually enough, 200 for
            sub-1% completeness gaps).
        baseline: ``"pad"`` (every row, prompt rows included, becomes the pad embedding) or
            ``"zeros"``.
        method: Captum's integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
        internal_batch_size: how many interpolation steps go through the model at once (lower it
            to save memory); ``None`` runs all ``n_steps`` together.
        max_new_tokens: length limit of the greedy generation (ignored with ``target``).
        generation_kwargs: more ``generate`` arguments (e.g. a task's ``generation_kwargs``);
            decoding is always greedy.
        progress: tqdm bar over the output tokens; ``None`` shows it on a terminal only.

    Example:
        >>> from peft_hybrid import HybridConfig, HybridModel
        >>> from peft_hybrid.interpret.attribution import attribute
        >>> from peft_hybrid.offline import t5_from_preset
        >>> base, tokenizer = t5_from_preset("tiny")
        >>> model = HybridModel(base, HybridConfig(num_virtual_tokens=4), tokenizer=tokenizer)
        >>> result = attribute(model, tokenizer, "Amy: see you at 5?", max_new_tokens=3, progress=False)
        >>> result.input_tokens[:4]
        ['P1', 'P2', 'P3', 'P4']
        >>> result.scores.shape == (len(result.input_tokens), len(result.output_tokens)), result.to_json("a.json").name
        (True, 'a.json')
    """
    ig_module = require_interpret("captum.attr")
    _check_arguments(text, target, n_steps, baseline, internal_batch_size)
    with _eval_float32(model):
        encoded = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
        input_ids = encoded["input_ids"]
        decoder_input_ids, output_ids = _decoder_ids(
            model, tokenizer, input_ids, encoded["attention_mask"], target, max_new_tokens, generation_kwargs
        )
        embeds, mask, num_prompt = _encoder_embeddings(model, input_ids, encoded["attention_mask"])
        reference = _baseline_embeddings(model, embeds, baseline)
        forward = _LogProbs(_base_of(model), mask, decoder_input_ids, output_ids)
        log_probs, baseline_log_probs = forward.endpoints(embeds, reference)
        options = dict(baselines=reference, n_steps=n_steps, method=method, internal_batch_size=internal_batch_size)
        scores = _integrate(ig_module.IntegratedGradients(forward), embeds, output_ids.shape[1], options, progress)

    out_ids, in_ids = output_ids[0].tolist(), input_ids[0].tolist()
    return _warned_if_incomplete(
        AttributionResult(
            input_tokens=[f"P{i + 1}" for i in range(num_prompt)] + _token_strings(tokenizer, in_ids),
            output_tokens=_token_strings(tokenizer, out_ids),
            scores=scores,
            log_probs=log_probs.tolist(),
            baseline_log_probs=baseline_log_probs.tolist(),
            deltas=(scores.sum(dim=0) - (log_probs - baseline_log_probs).cpu()).tolist(),
            num_prompt_tokens=num_prompt,
            input_ids=in_ids,
            output_ids=out_ids,
            text=text,
            output_text=decode_texts(tokenizer, [out_ids])[0],
            baseline=baseline,
            n_steps=n_steps,
            method=method,
            metadata={"target_given": target is not None},
        )
    )


def _integrate(ig: Any, embeds: torch.Tensor, num_outputs: int, options: dict[str, Any], progress: bool | None):
    """``[rows, outputs]`` scores: one Integrated Gradients run per output token, summed over the width."""
    from tqdm.auto import tqdm

    columns = []
    disable = None if progress is None else not progress
    for t in tqdm(range(num_outputs), desc="attributing output tokens", disable=disable):
        attributions = ig.attribute(embeds, target=t, **options)
        # Sum in float64 so the completeness check measures the integral, not the summation.
        # Detached: with a trainable base (mode "full") Captum's result stays in the graph.
        columns.append(attributions[0].detach().double().sum(dim=-1))
    return torch.stack(columns, dim=1).cpu()


def _warned_if_incomplete(result: AttributionResult) -> AttributionResult:
    """``result``, after a warning when its completeness gap says Integrated Gradients did not converge."""
    worst = max(result.relative_errors)
    if worst > _WARN_RELATIVE_ERROR:
        hint = (
            ", or use baseline='pad' (T5's layer norm makes the path from zeros steep)."
            if result.baseline == "zeros"
            else "."
        )
        warnings.warn(
            f"Integrated Gradients did not converge: a completeness gap of {100 * worst:.1f}% of f(x) - f(baseline) "
            f"with n_steps={result.n_steps}, baseline={result.baseline!r}. Raise n_steps{hint}",
            stacklevel=3,
        )
    return result


def _check_arguments(
    text: str, target: str | None, n_steps: int, baseline: str, internal_batch_size: int | None
) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r}: give the non-empty input text to explain.")
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise ValueError(f"target={target!r}: give a non-empty output text, or None to explain the greedy generation.")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(
            f"n_steps={n_steps!r} must be a positive integer (50 is typical; 200 for tight completeness)."
        )
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} is not valid; choose one of {', '.join(BASELINES)}.")
    if internal_batch_size is not None and (not isinstance(internal_batch_size, int) or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size={internal_batch_size!r} must be a positive integer or None.")
