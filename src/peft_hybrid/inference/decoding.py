"""Generated token ids to text, and the prediction rows an evaluation writes: one home for both.

The Trainer's evaluation, `generate_texts`, the server and the demo all decode with `decode_texts`,
so the same ids give the same text everywhere (special tokens dropped, tokenization spaces cleaned
up, surrounding whitespace stripped).

Example:
    >>> from peft_hybrid.offline import offline_tokenizer
    >>> tokenizer = offline_tokenizer()
    >>> ids = tokenizer(["Amy meets Ben."]).input_ids
    >>> decode_texts(tokenizer, ids)
    ['Amy meets Ben.']
    >>> decode_texts(tokenizer, [[-100, *ids[0]]])  # the Trainer pads gathered predictions with -100
    ['Amy meets Ben.']
    >>> decoded_rows(["Amy: hi"], ["Amy greets."], ["Amy says hi."])
    [{'source': 'Amy: hi', 'reference': 'Amy greets.', 'prediction': 'Amy says hi.'}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def decode_texts(tokenizer: Any, token_ids: Any) -> list[str]:
    """The text of each row of generated ``token_ids`` (a 2-D tensor, array or list of lists).

    Negative ids (the padding ``-100`` the Trainer adds when it gathers predictions of different
    lengths) read as the pad token, which decoding drops.
    """
    rows = token_ids.tolist() if hasattr(token_ids, "tolist") else [list(row) for row in token_ids]
    pad = tokenizer.pad_token_id
    rows = [[pad if token < 0 else token for token in row] for row in rows]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [text.strip() for text in texts]


def decode_window(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """The text of ``token_ids`` with `decode_texts`'s settings, not stripped: incremental decoding
    compares the texts of overlapping windows, and strips once itself."""
    return tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)


def decoded_rows(
    sources: Sequence[str], references: Sequence[str], predictions: Sequence[str]
) -> list[dict[str, str]]:
    """Pair sources, references and predictions into the rows an evaluation writes (``predictions.jsonl``)."""
    return [
        {"source": s, "reference": r, "prediction": p}
        for s, r, p in zip(sources, references, predictions, strict=True)
    ]
