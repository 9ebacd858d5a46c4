"""One request's row in the continuous batch: its decoder state, its text, the events it sends.

A row records each token it is given (`Row.add`), decides whether it has ended (end of
sequence, its own ``max_new_tokens``, one of its stop sequences), and sends its handler the
events the routes read (`peft_hybrid.serve.batcher.TokenEvent` per token for streams and
details, one `peft_hybrid.serve.batcher.Final` at the end). Text is decoded incrementally
(`peft_hybrid.serve.decoding.Detokenizer`), and only for rows that need it before the end.
"""

from __future__ import annotations

import math

import torch

from peft_hybrid.serve.batcher import Final, Job, Outbox, TokenEvent
from peft_hybrid.serve.decoding import Detokenizer, RowDecoder
from peft_hybrid.serve.engine import generation_error
from peft_hybrid.serve.requests import RequestError

__all__ = ["Row", "generation_error"]


class Row:
    """A job in the running batch, holding adapter ``name`` on the model."""

    def __init__(self, job: Job, name: str, tokenizer, start_token: int, outbox: Outbox | None = None) -> None:
        self.job = job
        self.outbox = outbox  # events go out with the step's others; None: each at once
        self.name = name
        self.cost = len(job.input_ids) + job.max_new_tokens  # what the row holds of the token budget
        self.decoder = RowDecoder(job.request, start_token=start_token)
        self.detok = Detokenizer(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.special = set(tokenizer.all_special_ids)
        request = job.request
        # A plain request needs its text once, at the end; streams and details need every token's
        # event and log-probability, and stop sequences the text at every step.
        self.streams = request.stream or request.details
        self.reads_text = self.streams or bool(request.stop)
        self.ended = False

    def add(self, token: int, scores: torch.Tensor | None = None, logprob: float | None = None) -> None:
        """Record ``token`` and send its event.

        ``scores``: the row's processed logits it was chosen from; a row that reports log-probabilities
        needs them, or ``logprob`` (the token's, taken with the batch's others).
        """
        if self.ended or self.job.cancelled:
            self.ended = True
            return
        self.decoder.record(token)
        piece = self.detok.add(token) if self.reads_text else ""
        reason = None
        if token == self.eos:
            reason = "eos_token"
        elif len(self.decoder.ids) >= self.job.max_new_tokens:
            reason = "length"
        elif self._stopped(piece):
            reason = "stop_sequence"
        self.ended = reason is not None
        final = None
        if reason is not None:
            final, rest = self._final(reason)
            piece += rest
        index = len(self.decoder.ids)
        if self.streams:
            if logprob is None:
                logprob = float(torch.log_softmax(scores.float(), dim=-1)[token])
            logprob = logprob if math.isfinite(logprob) else -1e30  # JSON has no -Infinity
            token_json = {"id": token, "text": piece, "logprob": logprob, "special": token in self.special}
            self._send(TokenEvent(index=index, token=token_json, final=final))
        elif final is not None:
            self._send(TokenEvent(index=index, token=None, final=final))

    def fail(self, error: RequestError) -> None:
        self.ended = True
        if not self.job.finished and not self.job.cancelled:
            self._send(error)

    def _send(self, event) -> None:
        if self.outbox is None:
            self.job.send(event)
        else:
            self.outbox.send(self.job, event)

    def _stopped(self, piece: str) -> bool:
        stops = self.job.request.stop
        if not stops or not piece:
            return False
        # TGI's rule: the row stops when its text ends with a stop sequence
        return any(self.detok.text.endswith(stop) for stop in stops)

    def _final(self, reason: str) -> tuple[Final, str]:
        if not self.reads_text:
            for token in self.decoder.ids:  # a plain request decodes once, at its end
                self.detok.ids.append(token)
        text, rest = self.detok.finish()
        if self.job.request.return_full_text:
            text = self.job.request.inputs + text
        final = Final(text, reason, len(self.decoder.ids), self.decoder.seed, len(self.job.input_ids))
        return final, rest
