"""Randomly initialised T5 models of exact published shapes, and a tokenizer built offline."""

from __future__ import annotations

import atexit
import functools
import io
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from peft_hybrid.offline.synthetic import tokenizer_corpus

# Shapes of the public checkpoints (FLAN-T5 is T5 v1.1: gated-GELU, untied lm_head).
PRESETS: dict[str, dict] = {
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, vocab_size=32128),
    "flan-t5-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, vocab_size=32128),
    "tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=None),
}
TOKENIZER_PIECES = 1000
# How a base model name says "this preset": ``preset:tiny`` (in adapter configs and --base).
PRESET_PREFIX = "preset:"


def preset_id(name: str) -> str:
    """The base-model name of preset ``name``, e.g. ``preset:tiny``.

    Example:
        >>> preset_id("tiny")
        'preset:tiny'
    """
    return PRESET_PREFIX + name


def train_t5_sentencepiece(
    lines: Iterable[str],
    folder: str | Path,
    vocab_size: int,
    *,
    character_coverage: float = 1.0,
    hard_vocab_limit: bool = False,
    num_threads: int = 1,
) -> Path:
    """Train a unigram SentencePiece model with T5's ids (pad 0, eos 1, unk 2, no bos) on ``lines``.

    Writes ``folder/spiece.model`` and returns ``folder``, ready for `t5_tokenizer`. One thread
    by default, so the same lines give the same pieces on every machine.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=character_coverage,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=num_threads,
        hard_vocab_limit=hard_vocab_limit,
        minloglevel=2,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


def t5_tokenizer(folder: str | Path):
    """The T5 tokenizer of a folder written by `train_t5_sentencepiece` (100 sentinels added)."""
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(str(folder), extra_ids=100, legacy=False)


def word_tokenizer(lines: Sequence[str], vocab_size: int):
    """A T5 tokenizer (pad 0, eos 1, unk 2, 100 sentinels last) whose pieces are the frequent words of ``lines``.

    SentencePiece's unigram trainer keeps word fragments on a small templated corpus (the synthetic
    dialogues give ``▁an`` + ``d`` and stop at 255 pieces whatever ``vocab_size`` asks), which
    makes sequences long and names harder to copy. BPE merges find the whole words; T5's tokenizer
    is a unigram model, so each BPE piece is scored by its log frequency in the BPE segmentation
    of ``lines``, which gives the same whole-word segmentation. One thread: the same lines give
    the same pieces on every machine.

    Example:
        >>> tokenizer = word_tokenizer(["Amy: see you at noon?", "Ben: see you there."] * 20, 60)
        >>> tokenizer.tokenize("Amy: see you there?")
        ['▁Amy', ':', '▁see', '▁you', '▁there', '?']
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    bpe = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    counts = Counter(piece for line in lines for piece in bpe.encode(line, out_type=str))
    total = sum(counts.values())
    scores = {piece: math.log(count / total) for piece, count in counts.items()}
    unseen = min(scores.values()) - 1.0  # pieces the corpus never needs rank below every seen one
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece, scores.get(piece, unseen)) for piece in map(bpe.id_to_piece, range(3, bpe.get_piece_size()))]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))]
    return T5Tokenizer(vocab=vocab, extra_ids=100)


@functools.cache
def _tokenizer_folder(pieces: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="peft-hybrid-tokenizer-"))
    atexit.register(shutil.rmtree, folder, True)
    return train_t5_sentencepiece(tokenizer_corpus(), folder, pieces)


def offline_tokenizer(pieces: int = TOKENIZER_PIECES):
    """A T5 tokenizer (pad 0, eos 1, unk 2, 100 sentinels) trained on the synthetic corpus."""
    return t5_tokenizer(_tokenizer_folder(pieces))


def t5_from_preset(name: str, seed: int = 0, device: str | torch.device | None = None):
    """``(model, tokenizer)``: a T5 of a preset's exact shape with random weights, no network.

    ``device="meta"`` builds the structure only (for counting parameters in milliseconds).

    Example:
        >>> model, tokenizer = t5_from_preset("tiny")
        >>> model.config.d_model
        64
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    tokenizer = offline_tokenizer()
    model = t5_model(PRESETS[name], tokenizer, seed=seed, device=device)
    model.config._name_or_path = preset_id(name)
    return model, tokenizer


def t5_model(
    shape: dict,
    tokenizer,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    tied_lm_head: bool = False,
    dropout_rate: float = 0.1,
):
    """A gated-GELU T5 of ``shape`` (a `PRESETS` entry) with random weights, in eval mode.

    A ``vocab_size`` of None takes ``tokenizer``'s size, rounded up to a multiple of 64.
    ``tied_lm_head=False`` gives the output layer its own weights, as FLAN-T5 (T5 v1.1) has,
    which matters for counts and for what full fine-tuning trains; ``True`` shares the input
    embedding with it, as the original T5 does (and scales the decoder output by d_model^-0.5).

    Example:
        >>> model = t5_model(PRESETS["tiny"], offline_tokenizer(), tied_lm_head=True)
        >>> model.lm_head.weight is model.shared.weight
        True
    """
    from transformers import T5Config, T5ForConditionalGeneration

    shape = dict(shape)
    if shape["vocab_size"] is None:
        shape["vocab_size"] = (len(tokenizer) + 63) // 64 * 64
    config = T5Config(
        **shape,
        num_decoder_layers=shape["num_layers"],
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=tied_lm_head,
        dropout_rate=dropout_rate,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = T5ForConditionalGeneration(config)
        if not tied_lm_head:
            # transformers builds T5 with lm_head tied to the shared embedding.
            model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * model.config.d_model**-0.5)
    model.config.tie_word_embeddings = tied_lm_head
    model.generation_config.decoder_start_token_id = 0
    model.eval()
    return model
