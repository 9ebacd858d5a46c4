"""Randomly initialised T5 models of exact published shapes, and a tokenizer built offline."""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tempfile
from collections.abc import Iterable
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
    from transformers import T5Config, T5ForConditionalGeneration

    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    shape = dict(PRESETS[name])
    tokenizer = offline_tokenizer()
    if shape["vocab_size"] is None:
        shape["vocab_size"] = (len(tokenizer) + 63) // 64 * 64
    config = T5Config(
        **shape,
        num_decoder_layers=shape["num_layers"],
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = T5ForConditionalGeneration(config)
        # transformers builds T5 with lm_head tied to the shared embedding; FLAN-T5 checkpoints
        # have their own lm_head, which matters for counts and for what full fine-tuning trains.
        model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * model.config.d_model**-0.5)
    model.config.tie_word_embeddings = False
    model.config._name_or_path = preset_id(name)
    model.generation_config.decoder_start_token_id = 0
    model.eval()
    return model, tokenizer
