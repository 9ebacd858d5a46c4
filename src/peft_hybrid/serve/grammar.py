"""Structured output: a regex or JSON schema turned into a per-row logits processor (``outlines_core``).

A grammar compiles once per (kind, value) to an ``outlines_core.Index`` over the tokenizer's
vocabulary (kept in a small LRU); each request gets its own ``Guide`` walking that index. At each
step the row's processor advances its guide by the tokens generated since the last step and
masks every token the grammar does not allow next (``-inf``); end-of-sequence is allowed only
where the grammar may end. A row can still stop at ``max_new_tokens`` before the grammar is
complete (finish reason ``length``), as in TGI.

A token's text is its SentencePiece piece with ``▁`` read as a space, which is what decoding
joins; special tokens are never allowed (end-of-sequence aside).

``outlines_core`` is the ``serve`` extra's (TGI uses the same library); without it a request with
a grammar is refused with a message saying what to install.

Example:
    >>> from peft_hybrid.offline import offline_tokenizer
    >>> compiler = GrammarCompiler(offline_tokenizer())
    >>> processor = compiler.processor(("regex", "yes|no"))
    >>> import torch
    >>> scores = processor([], torch.zeros(len(offline_tokenizer())))
    >>> sorted(offline_tokenizer().convert_ids_to_tokens(torch.isfinite(scores).nonzero()[:, 0].tolist()))
    ['n', 'y']
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

from peft_hybrid.serve.requests import RequestError

# JSON allows any whitespace between tokens; one optional space keeps sampled rows from spending
# their token budget on blanks, so a JSON answer ends within its max_new_tokens.
JSON_WHITESPACE = r"[ ]?"
_CACHE_SIZE = 64


class GrammarCompiler:
    """Compiles grammars for one tokenizer; `processor` gives a fresh row processor for a spec."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size or len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self._vocabulary = None
        self._indexes: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def processor(self, spec: tuple[str, str]) -> RowGrammar:
        """A new `RowGrammar` for ``("regex", pattern)`` or ``("json", schema text)``; 422 when it cannot compile."""
        return RowGrammar(self._index(spec), self.vocab_size, self.eos)

    def _index(self, spec: tuple[str, str]):
        with self._lock:
            if spec in self._indexes:
                self._indexes.move_to_end(spec)
                return self._indexes[spec]
        index = self._compile(spec)
        with self._lock:
            self._indexes[spec] = index
            while len(self._indexes) > _CACHE_SIZE:
                self._indexes.popitem(last=False)
        return index

    def _compile(self, spec: tuple[str, str]):
        oc = _outlines_core()
        kind, value = spec
        try:
            if kind == "json":
                from outlines_core.json_schema import build_regex_from_schema

                regex = build_regex_from_schema(value, JSON_WHITESPACE)
            else:
                regex = value
            return oc.Index(regex, self._vocab())
        except Exception as err:  # outlines_core raises ValueError/TypeError subclasses of its own
            what = "JSON schema" if kind == "json" else "regular expression"
            raise RequestError(f"`grammar`: this {what} cannot be used: {err}") from None

    def _vocab(self):
        if self._vocabulary is None:
            oc = _outlines_core()
            special = set(self.tokenizer.all_special_ids)
            pieces: dict[str, list[int]] = {}
            for token_id, piece in enumerate(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))):
                if token_id not in special and piece:
                    pieces.setdefault(piece.replace("\u2581", " "), []).append(token_id)
            self._vocabulary = oc.Vocabulary(self.eos, pieces)
        return self._vocabulary


class RowGrammar:
    """One row's grammar state: ``(generated_ids, scores[vocab]) -> scores`` with disallowed tokens at ``-inf``."""

    def __init__(self, index, vocab_size: int, eos: int) -> None:
        self.guide = _outlines_core().Guide(index)
        self.vocab_size = vocab_size
        self.eos = eos
        self.seen = 0

    def __call__(self, generated_ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        for token in generated_ids[self.seen :]:
            if token != self.eos and not self.guide.is_finished():
                self.guide.advance(token)
        self.seen = len(generated_ids)
        allowed = self.guide.get_tokens()
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[torch.tensor(allowed, dtype=torch.long, device=scores.device)] = True
        return scores.masked_fill(~keep, float("-inf"))


def _outlines_core():
    try:
        import outlines_core
    except ImportError:
        raise RequestError(
            "`grammar` needs the outlines_core package: pip install 'peft-hybrid[serve]'.",
            status=422,
            error_type="validation",
        ) from None
    return outlines_core


__all__ = ["GrammarCompiler", "RowGrammar"]
