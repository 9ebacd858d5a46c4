"""`peft-hybrid train` on a 4-bit base with TRL's flags: checkpoints, exact resume, manifest and card."""

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("bitsandbytes")

from helpers import FIXED_STEPS, quick_run_args  # noqa: E402
from peft_hybrid import HybridConfig  # noqa: E402
from peft_hybrid.cli import main as cli  # noqa: E402
from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv  # noqa: E402
from peft_hybrid.training.run_folder import MANIFEST_NAME  # noqa: E402

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst2")
    rows = sentiment_sentences(24, seed=0)
    return write_sst2_tsv(folder / "train.tsv", rows[:16]), write_sst2_tsv(folder / "dev.tsv", rows[16:])


def _train(out, data, resume=None, **flags):
    train, dev = data
    settings = dict(
        train_file=train,
        validation_file=dev,
        output_dir=out,
        mode="hybrid",
        num_virtual_tokens=4,
        lora_dropout=0.0,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        eval_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        warmup_steps=0,
        disable_tqdm=True,
        **FIXED_STEPS,
    )
    args = quick_run_args("train", "--task", "sst2", **{**settings, **flags})
    if resume is not None:
        args += ["--resume_from_checkpoint", str(resume)]
    return cli(args)


def test_train_on_a_4bit_base_records_it_and_resumes_exactly(tmp_path, data):
    straight = tmp_path / "straight"
    assert _train(straight, data, **NF4) == 0
    manifest = json.loads((straight / MANIFEST_NAME).read_text())
    assert manifest["base"] == {"model": "preset:tiny", "revision": None, "quantization": "bitsandbytes-nf4"}
    config = HybridConfig.load(straight)
    assert config.base_quantization == {
        "method": "bitsandbytes-nf4",
        "bits": 4,
        "double_quant": True,
        "compute_dtype": "float32",
    }
    card = (straight / "README.md").read_text()
    assert "| base quantized in training | bitsandbytes-nf4 (4-bit, nested quantization, compute float32)" in card
    summary = json.loads((straight / "training_summary.json").read_text())
    assert summary["model"]["base_quantization"]["method"] == "bitsandbytes-nf4"
    losses = [p["loss"] for p in summary["training_curve"]]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)

    resumed = tmp_path / "resumed"
    assert _train(resumed, data, resume=straight / "checkpoint-2", **NF4) == 0
    want = load_file(straight / "adapter_model.safetensors")
    got = load_file(resumed / "adapter_model.safetensors")
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    at_2 = load_file(straight / "checkpoint-2" / "adapter_model.safetensors")
    assert not all(torch.equal(at_2[k], want[k]) for k in want)  # steps 3-4 did change something


def test_resuming_a_4bit_checkpoint_on_a_full_precision_base_is_refused(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert _train(run, data, **{**NF4, "max_steps": 2}) == 0
    capsys.readouterr()
    assert _train(tmp_path / "other", data, resume=run / "checkpoint-2", max_steps=2) == 2
    assert "base.quantization: None in this run, 'bitsandbytes-nf4' there" in capsys.readouterr().err


def test_quantization_flags_without_bitsandbytes_exit_2_naming_the_extra(tmp_path, data, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    assert _train(tmp_path / "run", data, load_in_8bit=True) == 2
    assert "pip install 'peft-hybrid[quantize]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_8bit_flags_with_a_4bit_compute_dtype_are_refused(tmp_path, data, capsys):
    assert _train(tmp_path / "run", data, load_in_8bit=True, bnb_4bit_compute_dtype="bfloat16") == 2
    assert "4-bit settings" in capsys.readouterr().err


def test_bf16_frozen_base_on_a_quantized_base_is_refused(tmp_path, data, capsys):
    from peft_hybrid import HybridModel, HybridTrainer, HybridTrainingArguments
    from peft_hybrid.modeling.loading import load_base
    from peft_hybrid.modeling.quantization import QuantizationError, bnb_config

    base, tok = load_base("preset:tiny", quantization_config=bnb_config("bitsandbytes-nf4"))
    args = HybridTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, bf16=True, bf16_frozen_base=True, report_to="none"
    )
    with pytest.raises(QuantizationError, match="bf16_frozen_base=True casts the frozen base, but it is quantized"):
        HybridTrainer(HybridModel(base, HybridConfig(), tokenizer=tok), args, processing_class=tok)
