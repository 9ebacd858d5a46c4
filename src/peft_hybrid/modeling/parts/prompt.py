"""The ``prompt`` part: an encoder-side soft prompt (`peft_hybrid.modeling.prompt.SoftPrompt`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peft_hybrid.config import HybridConfig
from peft_hybrid.modeling.parts import AdapterPart
from peft_hybrid.modeling.prompt import PROMPT_KEY, SoftPrompt, save_peft_prompt


class PromptPart(AdapterPart):
    """``num_virtual_tokens`` trainable vectors before each encoder input; held in ``host.prompts[name]``."""

    kind = "prompt"

    def __init__(self, host: nn.Module, config: HybridConfig, adapter_name: str, *, tokenizer=None) -> None:
        super().__init__(host, config, adapter_name)
        embeddings = host.base_model.get_input_embeddings()
        prompt = SoftPrompt(config.num_virtual_tokens, embeddings.weight.shape[1]).to(embeddings.weight.device)
        prompt.initialize(
            config.prompt_init,
            embeddings,
            seed=config.seed,
            tokenizer=tokenizer or getattr(host, "tokenizer", None),
            text=config.prompt_init_text,
        )
        host.prompts[adapter_name] = prompt  # a submodule of the host: it moves and casts with the model
        self._prompt = prompt

    @classmethod
    def expected_shapes(cls, base_model: nn.Module, config: HybridConfig) -> dict[str, tuple[int, ...]]:
        return {PROMPT_KEY: (config.num_virtual_tokens, base_model.config.d_model)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self._prompt.tensors()

    def row_prompt(self) -> SoftPrompt:
        return self._prompt

    def merge(self) -> bool:
        return False  # vectors before the input have no weight to fold into: the prompt stays

    def remove(self) -> None:
        del self.host.prompts[self.name]

    def export_peft(self, folder: Path) -> Path:
        base = self.host.base_model
        return save_peft_prompt(folder, self._prompt, base.config, self.config.base_model_name_or_path)

    @classmethod
    def card_line(cls, config: HybridConfig) -> str:
        return "a soft prompt prepended to the encoder input"
