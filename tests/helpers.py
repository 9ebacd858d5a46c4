"""Small builders shared by the tests."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, write_samsum_csv

# A LoRA whose scale alpha / r is 4, not 1: every test of a merge uses it, so that a merge which
# dropped the scaling would change the outputs those tests compare.
SCALED_LORA = dict(r=4, lora_alpha=16)

TEXTS = ["Amy: Hi Ben! Are you free tomorrow?\r\nBen: Sure.", "Sam: I'll be 10 minutes late."]
TARGETS = ["Amy and Ben meet tomorrow.", "Sam is late."]

# HybridTrainingArguments of every quick in-process run: CPU, fp32, no progress bars, no integrations.
FAST_TRAINING = dict(
    use_cpu=True, bf16=False, report_to="none", disable_tqdm=True, warmup_steps=0, dataloader_num_workers=0
)
# Nine steps with a checkpoint at step 7: a resume from it replays steps 8 and 9 exactly.
RESUME_RUN = dict(
    max_steps=9,
    save_strategy="steps",
    save_steps=7,
    logging_steps=1,
    save_total_limit=None,
    per_device_train_batch_size=8,
    learning_rate=1e-2,
)
# The command-line flags of a quick run of the tiny preset on CPU in fp32, reporting nowhere.
QUICK_RUN = {"model_preset": "tiny", "use_cpu": True, "bf16": False, "report_to": "none"}
# A run of exactly ``max_steps``: no best-checkpoint selection, no early stopping.
FIXED_STEPS = {"load_best_model_at_end": False, "early_stopping_patience": 0}


def quick_run_args(*leading: str, **flags) -> list[str]:
    """``leading`` (e.g. ``"train", "--task", "samsum"``), then `QUICK_RUN` updated with ``flags``, as
    ``--name value`` pairs (booleans spelled ``true``/``false`` as the recipe's parser reads them)."""
    args = list(leading)
    for name, value in {**QUICK_RUN, **flags}.items():
        args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def samsum_csv(path: Path, n: int = 4, seed: int = 0) -> Path:
    """A SAMSum-format CSV of ``n`` synthetic dialogues."""
    return write_samsum_csv(path, dialogue_summary_pairs(n, seed))


def tiny_model(mode: str = "hybrid", seed: int = 0, perturb: bool = True, **config) -> tuple[HybridModel, object]:
    """A tiny HybridModel whose adapter is moved off its initial values (LoRA B starts at zero)."""
    base, tok = t5_from_preset("tiny", seed=seed)
    # The adapter's own initialisation draws from torch's global generator: seeded here, so the
    # model does not depend on which tests ran before it in the same process (pytest -n, -k).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HybridModel(base, HybridConfig(mode=mode, lora_dropout=0.0, **config), tokenizer=tok)
    if perturb:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.adapter_tensors().values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval(), tok


def mixed_model() -> tuple[HybridModel, object]:
    """Four ways a row can run: a 4-token hybrid (``default``), a 2-token hybrid (``short``), LoRA only
    (``lora``), the bare base (``__base__``)."""
    model, tokenizer = tiny_model("hybrid", num_virtual_tokens=4)
    model.add_adapter("short", HybridConfig(mode="hybrid", num_virtual_tokens=2, lora_dropout=0.0, seed=3))
    model.add_adapter("lora", HybridConfig(mode="lora", lora_dropout=0.0, seed=4, **SCALED_LORA))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in model.all_adapter_tensors():
            t.add_(torch.randn(t.shape, generator=gen) * 0.2)
    return model.eval(), tokenizer


def batch(tok, texts=TEXTS, targets=TARGETS) -> dict:
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = tok(targets, return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    return {**enc, "labels": labels}


# A child process's timeout in tests: it only turns a hang into a failure, so it sits far above what
# a busy machine takes (the Hub end-to-end test of test_loading took 400 s on 2 busy cores); never a speed check.
HANG_S = 1800


def run_child(code: str, args: list[str], stdin, out: Path, env: dict, timeout: float) -> tuple[dict, str]:
    """Run ``code`` in a fresh interpreter with ``args`` and ``stdin`` as JSON; it must exit 0 and
    write its findings as JSON to ``out``. Returns the findings and the child's stderr."""
    run = subprocess.run(
        [sys.executable, "-c", code, *args],
        input=json.dumps(stdin),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text()), run.stderr
