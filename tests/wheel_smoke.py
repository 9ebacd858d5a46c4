"""Smoke test of an installed, not editable, peft_hybrid: save an adapter with its card, reload it.

.ci/wheel_smoke runs it in a fresh venv that holds the built wheel and its dependencies only;
tests/test_packaging.py runs it on the wheel unpacked. Run it from a folder outside the checkout
(so the sources are not importable): ``cd "$(mktemp -d)" && python /path/to/tests/wheel_smoke.py``.
It exits non-zero, saying why, on any failure.
"""

import sys
import tempfile
from pathlib import Path

import torch

import peft_hybrid
from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset


def _logits(model: HybridModel, batch, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, labels=labels).logits


def main() -> None:
    installed = Path(peft_hybrid.__file__).resolve().parent
    # A checkout's src/peft_hybrid sits two levels below its pyproject.toml; an installed one does not.
    assert not (installed.parents[1] / "pyproject.toml").is_file(), f"peft_hybrid came from a checkout: {installed}"
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="hybrid", task="samsum"), tokenizer=tokenizer).eval()
    # LoRA's B starts at zero: move every trainable tensor so the reload has something to get wrong.
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    batch = tokenizer(["Amy: Are you free tomorrow?\r\nBen: Yes, at noon."], return_tensors="pt")
    labels = tokenizer(["Amy and Ben meet tomorrow at noon."], return_tensors="pt").input_ids
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        model.save_pretrained(folder)  # renders the card from the package's template
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert card.startswith("---\n") and "library_name: peft-hybrid" in card, card[:400]
        reloaded = HybridModel.from_pretrained(folder, base_model=t5_from_preset("tiny")[0]).eval()
        assert torch.equal(_logits(reloaded, batch, labels), _logits(model, batch, labels))
    print(f"wheel smoke test passed: peft_hybrid {peft_hybrid.__version__} from {installed}")


if __name__ == "__main__":
    sys.exit(main())
