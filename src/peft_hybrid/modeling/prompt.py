"""The encoder-side soft prompt: its initialisation and how it joins the encoder input."""

from __future__ import annotations

import torch
from torch import nn

PROMPT_KEY = "prompt_embeddings"
# T5's vocabulary layout: pad, eos, unk first; 100 sentinel ids (<extra_id_N>) after the real pieces.
_T5_LEADING_SPECIAL = 3
_T5_SENTINELS = 100


class SoftPrompt(nn.Module):
    """``num_virtual_tokens`` trainable vectors prepended to the encoder input embeddings.

    The decoder is driven by the labels, so the prompt lives on the encoder side only (as in the
    paper): 30 x 768 = 23,040 parameters on FLAN-T5-base.
    """

    def __init__(self, num_virtual_tokens: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_virtual_tokens, embedding_dim))

    @property
    def num_virtual_tokens(self) -> int:
        return self.weight.shape[0]

    def prepend(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``[prompt; inputs_embeds]`` and the attention mask extended with ones."""
        batch, length = inputs_embeds.shape[:2]
        prompt = self.weight.to(inputs_embeds.dtype).expand(batch, -1, -1)
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
        prompt_mask = attention_mask.new_ones(batch, self.num_virtual_tokens)
        return torch.cat([prompt, inputs_embeds], dim=1), torch.cat([prompt_mask, attention_mask], dim=1)

    # --- initialisation --------------------------------------------------------------------
    @torch.no_grad()
    def initialize(
        self,
        strategy: str,
        word_embeddings: nn.Embedding,
        *,
        seed: int,
        tokenizer=None,
        text: str | None = None,
    ) -> None:
        """Fill the prompt in place.

        - ``"sample_vocab"``: embeddings of real vocabulary pieces sampled without replacement
          (never pad/eos/unk or sentinels, unlike copying rows 0..N-1).
        - ``"text"``: embeddings of ``text``'s tokens, repeated or cut to length.
        - ``"random"``: normal noise with the word embeddings' standard deviation.
        """
        generator = torch.Generator().manual_seed(seed)
        table = word_embeddings.weight
        n = self.num_virtual_tokens
        if strategy == "random":
            std = table.float().std().item()
            values = torch.randn(n, table.shape[1], generator=generator) * std
        else:
            ids = (
                _text_ids(tokenizer, text)
                if strategy == "text"
                else _sample_ids(table.shape[0], n, generator, tokenizer)
            )
            ids = ids.repeat((n + len(ids) - 1) // len(ids))[:n]
            values = table[ids.to(table.device)].float()
        self.weight.copy_(values.to(self.weight.device, self.weight.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PROMPT_KEY: self.weight}


def prepend_per_row(
    prompts: list[torch.Tensor | None], inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own prompt (or none) followed by that row's real tokens, padded on the right.

    ``prompts[i]`` is row ``i``'s ``(length, dim)`` prompt or ``None``. A row's real tokens are the
    positions its mask marks (in order, wherever the input's padding was), so each row reads
    ``[prompt_i; tokens_i; padding]``: the same sequence, at the same relative positions, as the
    row alone. Returns the joined embeddings and their attention mask.
    """
    batch, length, dim = inputs_embeds.shape
    device = inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    prompt_lengths = torch.tensor([0 if p is None else p.shape[0] for p in prompts], device=device)
    longest = int(prompt_lengths.max())
    prompt_rows = inputs_embeds.new_zeros(batch, longest, dim)
    for row, prompt in enumerate(prompts):
        if prompt is not None:
            prompt_rows[row, : prompt.shape[0]] = prompt.to(inputs_embeds.dtype)
    real = attention_mask.bool()
    order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices  # real tokens first, in order
    tokens = torch.gather(inputs_embeds, 1, order.unsqueeze(-1).expand(-1, -1, dim))
    total = prompt_lengths + real.sum(dim=1)
    position = torch.arange(int(total.max()), device=device).unsqueeze(0)
    offset = prompt_lengths.unsqueeze(1)
    source = torch.where(position < offset, position, longest + position - offset).clamp(max=longest + length - 1)
    joined = torch.gather(torch.cat([prompt_rows, tokens], dim=1), 1, source.unsqueeze(-1).expand(-1, -1, dim))
    return joined, (position < total.unsqueeze(1)).to(attention_mask.dtype)


def join_prompts(
    embeddings: nn.Module,
    prompt: SoftPrompt | None,
    prompts: list[SoftPrompt | None] | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> dict[str, torch.Tensor | None]:
    """The encoder's keyword inputs with ``prompt`` before every row, or ``prompts[i]`` before row ``i``."""
    if (prompt is None) if prompts is None else all(p is None for p in prompts):
        return {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
    if inputs_embeds is None:
        if input_ids is None:
            raise ValueError("Pass input_ids or inputs_embeds.")
        inputs_embeds = embeddings(input_ids)
    if prompts is None:
        inputs_embeds, attention_mask = prompt.prepend(inputs_embeds, attention_mask)
    else:
        weights = [None if p is None else p.weight for p in prompts]
        inputs_embeds, attention_mask = prepend_per_row(weights, inputs_embeds, attention_mask)
    return {"input_ids": None, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}


def _candidate_ids(vocab_rows: int, tokenizer) -> torch.Tensor:
    if tokenizer is not None:
        special = set(tokenizer.all_special_ids)
        size = min(len(tokenizer), vocab_rows)
        sentinel_like = {
            i
            for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(size))))
            if tok and tok.startswith("<extra_id_")
        }
        ids = torch.tensor([i for i in range(size) if i not in special and i not in sentinel_like], dtype=torch.long)
    else:
        # Without a tokenizer, assume T5's layout (sentinels and padding rows at the end) and keep
        # a conservative range: round the end down to a multiple of 128 below the sentinels.
        real_end = max((vocab_rows - _T5_SENTINELS) // 128 * 128, _T5_LEADING_SPECIAL + 1)
        ids = torch.arange(_T5_LEADING_SPECIAL, real_end)
    if not len(ids):
        raise ValueError("No ordinary vocabulary tokens to initialise the soft prompt from; use prompt_init='random'.")
    return ids


def _sample_ids(vocab_rows: int, n: int, generator: torch.Generator, tokenizer) -> torch.Tensor:
    candidates = _candidate_ids(vocab_rows, tokenizer)
    order = torch.randperm(len(candidates), generator=generator)
    return candidates[order[: min(n, len(candidates))]]


def _text_ids(tokenizer, text: str | None) -> torch.Tensor:
    if tokenizer is None:
        raise ValueError("prompt_init='text' needs a tokenizer: HybridModel(base, config, tokenizer=tokenizer).")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_init_text={text!r} tokenizes to nothing; give a non-empty text.")
    return torch.tensor(ids)


def save_peft_prompt(folder, prompt: SoftPrompt, base_config, base_model_name_or_path: str | None):
    """Write a vanilla PEFT prompt-tuning adapter (encoder only: num_transformer_submodules=1)."""
    from peft import PromptTuningConfig

    from peft_hybrid.serialization import WEIGHTS_NAME, write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    PromptTuningConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=prompt.num_virtual_tokens,
        token_dim=base_config.d_model,
        num_transformer_submodules=1,
        num_attention_heads=base_config.num_heads,
        num_layers=base_config.num_layers,
        base_model_name_or_path=base_model_name_or_path,
    ).save_pretrained(str(folder))
    write_safetensors(folder / WEIGHTS_NAME, prompt.tensors())
    return folder
