"""Randomly initialised T5 models of exact published shapes, and a tokenizer built offline."""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tempfile
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


@functools.cache
def _tokenizer_folder(pieces: int) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus()),
        model_writer=model,
        vocab_size=pieces,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder = Path(tempfile.mkdtemp(prefix="peft-hybrid-tokenizer-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


def offline_tokenizer(pieces: int = TOKENIZER_PIECES):
    """A T5 tokenizer (pad 0, eos 1, unk 2, 100 sentinels) trained on the synthetic corpus."""
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(str(_tokenizer_folder(pieces)), extra_ids=100, legacy=False)


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
