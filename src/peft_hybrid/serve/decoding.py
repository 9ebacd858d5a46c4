"""Per-row decoding state: each request's own sampling settings, generator, stops and text.

A row of the running batch picks its next token from its own logits only (`RowDecoder.choose`):
repetition penalty, then the request's ``logits_processor`` (structured output), then either the
argmax (greedy) or temperature, top-k, top-p and typical-p warping and a draw from the row's own
``torch.Generator``, seeded from the request (or from a seed drawn for it, reported back). What
shares the batch never enters a row's choice, so a request's text depends only on its own input,
adapter and seed. The penalty and the warpers are transformers' own, in ``generate``'s order.

`Detokenizer` turns tokens into text incrementally (a window of the last tokens, so each token
costs O(1)): every piece is what the token adds to the text, and the pieces join to the text
``peft-hybrid predict`` decodes.

Example:
    >>> import torch
    >>> from peft_hybrid.serve.requests import GenerateRequest
    >>> row = RowDecoder(GenerateRequest(inputs="hi", do_sample=True, top_k=2, seed=7), start_token=0)
    >>> row.seed
    7
    >>> logits = torch.tensor([0.0, 3.0, 2.0, -1.0])
    >>> token, _ = row.choose(logits)
    >>> token in (1, 2)  # top-k 2 keeps tokens 1 and 2
    True
    >>> RowDecoder(GenerateRequest(inputs="hi"), start_token=0).choose(logits)[0]  # greedy
    1
"""

from __future__ import annotations

import random
from typing import Any

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from peft_hybrid.inference.decoding import decode_window
from peft_hybrid.serve.formatting import decode_output


def draw_seed() -> int:
    """A fresh seed for a sampled request that sent none (TGI draws one per request too)."""
    return random.SystemRandom().randrange(2**63)


class RowDecoder:
    """One request's decoding: its settings, its generator, the tokens it has so far."""

    def __init__(self, request: Any, *, start_token: int) -> None:
        self.request = request
        self.sampled = bool(request.do_sample)
        self.seed: int | None = None
        self.generator: torch.Generator | None = None
        if self.sampled:
            self.seed = request.seed if request.seed is not None else draw_seed()
            self.generator = torch.Generator().manual_seed(self.seed)
        # generate penalises the decoder's whole input, the start token included: so does a row.
        self._seen = [start_token]
        self.ids: list[int] = []
        self._penalty = None
        if request.repetition_penalty is not None:
            self._penalty = RepetitionPenaltyLogitsProcessor(request.repetition_penalty)
        self._processor = getattr(request, "logits_processor", None)
        self._warpers = self._make_warpers(request) if self.sampled else []

    @staticmethod
    def _make_warpers(request: Any) -> list:
        warpers = []
        if request.temperature is not None and request.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(request.temperature))
        if request.top_k is not None:
            warpers.append(TopKLogitsWarper(request.top_k))
        if request.top_p is not None:
            warpers.append(TopPLogitsWarper(request.top_p))
        if request.typical_p is not None:
            warpers.append(TypicalLogitsWarper(request.typical_p))
        return warpers

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing to apply: the batch takes the argmax of all such rows at once."""
        return not self.sampled and self._penalty is None and self._processor is None

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The row's logits ``[vocab]`` after its penalty and its logits processor (what logprobs report)."""
        scores = logits.float()
        if self._penalty is not None:
            seen = torch.tensor([self._seen], device=scores.device)
            scores = self._penalty(seen, scores.unsqueeze(0))[0]
        if self._processor is not None:
            scores = self._processor(list(self.ids), scores)
            if not isinstance(scores, torch.Tensor) or scores.shape != logits.shape:
                raise ValueError(f"logits_processor must return a tensor of shape {tuple(logits.shape)}.")
        return scores

    def choose(self, logits: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The next token from this row's ``logits`` ``[vocab]``, and the scores it was chosen from."""
        scores = self.scores(logits)
        if not self.sampled:
            token = int(torch.argmax(scores))
        else:
            warped = scores.unsqueeze(0)
            seen = torch.tensor([self._seen], device=scores.device)
            for warper in self._warpers:
                warped = warper(seen, warped)
            probs = torch.softmax(warped[0], dim=-1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
        return token, scores

    def record(self, token: int) -> None:
        self._seen.append(token)
        self.ids.append(token)


def greedy_choices(logits: torch.Tensor, greedy: list[int], streams: list[int]) -> tuple[list[int], dict[int, float]]:
    """The argmax of the batch's ``greedy`` rows (0 for the others), and its log-probability for ``streams``.

    Plain greedy rows (`RowDecoder.plain_greedy`) need nothing of their own: one argmax and one
    log-softmax for all of them give each row what its own would.
    """
    rows = logits.shape[0]
    tokens = [0] * rows
    if not greedy:
        return tokens, {}
    whole = len(greedy) == rows  # the usual batch: no rows to pick out first
    picked = logits if whole else logits[torch.tensor(greedy, device=logits.device)]
    chosen = torch.argmax(picked, dim=-1)
    for i, token in zip(greedy, chosen.tolist()):
        tokens[i] = token
    if not streams:
        return tokens, {}
    at = {i: n for n, i in enumerate(greedy)}
    index = torch.tensor([at[i] for i in streams], device=logits.device)
    scores = picked if len(streams) == len(greedy) else picked[index]
    chosen = chosen[:, None] if len(streams) == len(greedy) else chosen[index, None]
    values = torch.log_softmax(scores.float(), dim=-1).gather(1, chosen)[:, 0].tolist()
    return tokens, dict(zip(streams, values))


class Detokenizer:
    """Text of a growing token list, a piece per token (O(1) each); pieces join to the final text.

    A window starting one token back is decoded with and without the new tokens: the token
    before gives the new one its leading space (SentencePiece), and a window ending in an
    incomplete character (``"\\ufffd"``) waits for the next token. `finish` hands out whatever
    the whole decode adds beyond the pieces (the strip and clean-up of offline decoding).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # the pieces so far
        self._prefix = 0
        self._read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd") or not after.startswith(before):
            return ""
        piece = after[len(before) :]
        if not self.text:
            piece = piece.lstrip()  # offline decoding strips the text
        self._prefix, self._read = self._read, len(self.ids)
        self.text += piece
        return piece

    def finish(self) -> tuple[str, str]:
        """``(the text as offline decoding gives it, the piece still missing from the pieces)``."""
        full = decode_output(self.tokenizer, self.ids)
        rest = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += rest
        return full, rest

    def _decode(self, ids: list[int]) -> str:
        return decode_window(self.tokenizer, ids)
