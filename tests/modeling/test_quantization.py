"""Hybrid adapters on a bitsandbytes-quantized frozen base (4-bit NF4/FP4, 8-bit), on the CPU."""

import copy
import logging

import pytest
import torch

pytest.importorskip("bitsandbytes")

from peft.tuners.lora import bnb as peft_bnb  # noqa: E402
from transformers import AutoModelForSeq2SeqLM, BitsAndBytesConfig  # noqa: E402

from peft_hybrid import HybridConfig, HybridModel  # noqa: E402
from peft_hybrid.inference import merged_lora  # noqa: E402
from peft_hybrid.modeling.loading import load_base  # noqa: E402
from peft_hybrid.modeling.quantization import (  # noqa: E402
    QuantizationArguments,
    QuantizationError,
    bnb_config,
    quantization_record,
)

CONFIG = HybridConfig(mode="hybrid", num_virtual_tokens=5, lora_dropout=0.0, target_modules=["q", "k", "v", "o"])
TEXTS = ["Amy: are you free tomorrow? Ben: yes, at noon.", "Tom: late again", "Liz: did you feed the cat?"]
TARGETS = ["Amy and Ben meet at noon.", "Tom is late.", "Liz asks about the cat."]
QUANTIZED = ["bitsandbytes-nf4", "bitsandbytes-fp4", "bitsandbytes"]


def _batch(tok):
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    labels = tok(TARGETS, return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    return {**enc, "labels": labels}


def _quantized(quantize, config=CONFIG):
    base, tok = load_base("preset:tiny", quantization_config=bnb_config(quantize))
    return HybridModel(base, config, tokenizer=tok), tok


def _train(model, tok, steps=6):
    batch = _batch(tok)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny T5 saved as a folder: the standard flow quantizes it as ``from_pretrained`` loads it."""
    base, tok = load_base("preset:tiny")
    folder = tmp_path_factory.mktemp("tiny-t5")
    base.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "settings, layer",
    [
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, peft_bnb.Linear4bit),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True}, peft_bnb.Linear4bit),
        ({"load_in_8bit": True}, peft_bnb.Linear8bitLt),
    ],
    ids=["nf4", "fp4-nested", "int8"],
)
def test_standard_flow_puts_lora_on_peft_bnb_layers_with_the_full_precision_counts(tiny_folder, settings, layer):
    full = HybridModel(AutoModelForSeq2SeqLM.from_pretrained(tiny_folder), CONFIG)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_folder, quantization_config=BitsAndBytesConfig(**settings))
    model = HybridModel(base, CONFIG)
    attention = model.base_model.encoder.block[0].layer[0].SelfAttention
    assert all(isinstance(getattr(attention, name), layer) for name in ("q", "k", "v", "o"))
    assert model.num_parameters(trainable_only=True) == full.num_parameters(trainable_only=True) == 12_608
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32} and model.prompt.weight.requires_grad
    assert sorted(id(p) for p in trainable) == sorted(id(t) for t in model.adapter_tensors().values())
    record = model.hybrid_config.base_quantization
    assert record["method"] == quantization_record(base)["method"]
    assert record["bits"] == (8 if settings.get("load_in_8bit") else 4)
    assert record["double_quant"] is bool(settings.get("bnb_4bit_use_double_quant"))
    assert full.hybrid_config.base_quantization is None


def test_kbit_preparation_keeps_the_unquantized_weights_in_fp32(tiny_folder):
    """As PEFT's prepare_model_for_kbit_training: a bf16 load's norms, embeddings and LM head go to fp32."""
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_folder, quantization_config=config, dtype=torch.bfloat16)
    assert base.shared.weight.dtype == torch.bfloat16
    model = HybridModel(base, CONFIG)
    packed = {type(p).__name__: p.dtype for p in base.parameters() if type(p).__name__ == "Params4bit"}
    floats = {p.dtype for p in model.parameters() if type(p).__name__ != "Params4bit"}  # LoRA and prompt too
    assert packed == {"Params4bit": torch.uint8} and floats == {torch.float32}
    assert not any(p.requires_grad for p in base.parameters() if type(p).__name__ == "Params4bit")
    assert model.hybrid_config.base_quantization["compute_dtype"] == "bfloat16"


@pytest.mark.parametrize("quantize", ["bitsandbytes-nf4", "bitsandbytes"], ids=["nf4", "int8"])
def test_a_few_optimizer_steps_lower_the_loss_and_leave_the_base_untouched(quantize):
    model, tok = _quantized(quantize)
    frozen = {k: v.clone() for k, v in model.base_model.state_dict().items() if "lora_" not in k}
    model, losses = _train(model, tok)
    assert losses[-1] < losses[0] - 0.5, losses
    after = {k: v for k, v in model.base_model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_an_adapter_trained_on_4bit_reloads_on_4bit_and_on_fp32_with_the_expected_logits(tmp_path, caplog):
    model, tok = _quantized("bitsandbytes-nf4")
    model, _ = _train(model, tok)
    batch = _batch(tok)
    folder = model.save_pretrained(tmp_path / "nf4")
    with torch.no_grad():
        trained = model(**batch).logits
        same = HybridModel.from_pretrained(folder, quantization_config=bnb_config("bitsandbytes-nf4")).eval()
        assert torch.equal(same(**batch).logits, trained)  # quantizing the same weights gives the same base
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="peft_hybrid.modeling.quantization"):
            full = HybridModel.from_pretrained(folder).eval()  # the base the config names, in full precision
        assert [r.getMessage() for r in caplog.records if r.name == "peft_hybrid.modeling.quantization"] == [
            "adapter 'default' was trained on a base quantized as bitsandbytes-nf4 (4-bit, compute float32); "
            "this base is none (full precision) (outputs may differ slightly)."
        ]
        reference = HybridModel(load_base("preset:tiny")[0], CONFIG).eval()
        reference.load_adapter_tensors({k: v.detach() for k, v in model.adapter_tensors().items()})
        torch.testing.assert_close(full(**batch).logits, reference(**batch).logits, rtol=0, atol=0)
    assert full.hybrid_config.base_quantization["method"] == "bitsandbytes-nf4"  # provenance kept


def test_a_full_precision_adapter_loads_on_a_4bit_base_with_one_log_line(tmp_path, caplog):
    base, tok = load_base("preset:tiny")
    model, _ = _train(HybridModel(base, CONFIG, tokenizer=tok), tok, steps=2)
    folder = model.save_pretrained(tmp_path / "fp32")
    quantized = HybridModel(load_base("preset:tiny", quantization_config=bnb_config("bitsandbytes-nf4"))[0], CONFIG)
    reference = quantized.base_model
    with caplog.at_level(logging.WARNING, logger="peft_hybrid.modeling.quantization"):
        loaded = HybridModel.from_pretrained(folder, quantization_config=bnb_config("bitsandbytes-nf4")).eval()
    ours = [r.getMessage() for r in caplog.records if r.name == "peft_hybrid.modeling.quantization"]
    assert len(ours) == 1 and "this base is bitsandbytes-nf4" in ours[0]
    assert loaded.hybrid_config.base_quantization is None
    quantized.load_adapter_tensors({k: v.detach() for k, v in model.adapter_tensors().items()})
    with torch.no_grad():
        assert torch.equal(loaded(**_batch(tok)).logits, quantized.eval()(**_batch(tok)).logits)
    assert reference is quantized.base_model


@pytest.mark.parametrize("quantize", ["bitsandbytes-nf4", "bitsandbytes"], ids=["nf4", "int8"])
def test_mixed_batch_rows_equal_each_row_alone(quantize):
    model, tok = _quantized(quantize)
    model.add_adapter("lora", HybridConfig(mode="lora", r=2, lora_dropout=0.0))
    model.add_adapter("prompt", HybridConfig(mode="prompt", num_virtual_tokens=3))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.all_adapter_tensors():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    model.eval()
    names = ["default", "lora", "prompt"]
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    mixed = model.generate(**batch, adapter_names=names, max_new_tokens=6)
    for row, name in enumerate(names):
        alone = tok([TEXTS[row]], return_tensors="pt")
        want = model.generate(**alone, adapter_names=[name], max_new_tokens=6)[0]
        assert torch.equal(mixed[row, : len(want)], want), (row, name)
    with torch.no_grad():
        base_row = model.base_model(**tok([TEXTS[0]], return_tensors="pt"), labels=batch.input_ids[:1]).logits
        own = model(**tok([TEXTS[0]], return_tensors="pt"), labels=batch.input_ids[:1], adapter_names=["default"])
    assert (own.logits - base_row).abs().max() > 0.05  # the adapter really changes the row


def test_merged_lora_runs_unmerged_on_a_quantized_base_with_one_log_line(caplog):
    model, tok = _quantized("bitsandbytes-nf4")
    with torch.no_grad():
        for tensor in model.adapter_tensors().values():
            tensor.add_(0.2)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    want = model.eval().generate(**batch, max_new_tokens=5)
    with caplog.at_level(logging.INFO, logger="peft_hybrid.modeling.quantization"):
        for _ in range(2):
            with merged_lora(model):
                assert torch.equal(model.generate(**batch, max_new_tokens=5), want)
    assert [r.getMessage() for r in caplog.records if r.name == "peft_hybrid.modeling.quantization"] == [
        "merged_lora: the base is quantized (bitsandbytes-nf4 (4-bit, compute float32)), so LoRA runs unmerged "
        "beside it."
    ]
    uniform = model.generate(**batch, adapter_names=["default"] * len(TEXTS), max_new_tokens=5)
    assert torch.equal(uniform, want)
    with pytest.raises(QuantizationError, match="merge_and_unload\\(\\): this base is quantized"):
        model.merge_and_unload()


def test_vanilla_peft_export_of_a_4bit_adapter_loads_in_peft(tmp_path):
    from peft import PeftModel

    config = HybridConfig(mode="lora", r=2, lora_dropout=0.0)
    model, tok = _quantized("bitsandbytes-nf4", config)
    model, _ = _train(model, tok, steps=2)
    written = model.export_peft(tmp_path / "export")
    batch = _batch(tok)
    peft_model = PeftModel.from_pretrained(load_base("preset:tiny")[0], str(written["lora"])).eval()
    reference = HybridModel(load_base("preset:tiny")[0], config).eval()
    reference.load_adapter_tensors({k: v.detach() for k, v in model.adapter_tensors().items()})
    quantized_base = load_base("preset:tiny", quantization_config=bnb_config("bitsandbytes-nf4"))[0]
    peft_quantized = PeftModel.from_pretrained(quantized_base, str(written["lora"])).eval()
    with torch.no_grad():
        assert torch.equal(peft_model(**batch).logits, reference(**batch).logits)
        assert torch.equal(peft_quantized(**batch).logits, model(**batch).logits)


# --- refusals -------------------------------------------------------------------------------------
def test_mode_full_is_refused_on_a_quantized_base():
    base, _ = load_base("preset:tiny", quantization_config=bnb_config("bitsandbytes-nf4"))
    with pytest.raises(QuantizationError, match="mode 'full' trains every base weight, but this base is quantized"):
        HybridModel(base, HybridConfig(mode="full"))


def test_quantization_without_bitsandbytes_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(QuantizationError, match=r"pip install 'peft-hybrid\[quantize\]'"):
        QuantizationArguments(load_in_4bit=True)
    with pytest.raises(QuantizationError, match="bitsandbytes, which is not installed"):
        bnb_config("bitsandbytes")
    assert QuantizationArguments().quantization_config() is None  # no quantization asked: nothing needed


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"load_in_4bit": True, "load_in_8bit": True}, "exclude each other"),
        ({"load_in_8bit": True, "bnb_4bit_compute_dtype": "bfloat16"}, "4-bit settings"),
        ({"load_in_8bit": True, "use_bnb_nested_quant": True}, "4-bit settings"),
        ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float64"}, "compute dtype 'float64' is not supported"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, "choose nf4 or fp4"),
    ],
)
def test_unsupported_combinations_are_refused(settings, message):
    with pytest.raises(QuantizationError, match=message):
        QuantizationArguments(**settings)


def test_arguments_build_the_config_trl_names_ask_for():
    args = QuantizationArguments(load_in_4bit=True, bnb_4bit_quant_type="fp4", use_bnb_nested_quant=True)
    config = args.quantization_config()
    assert args.quantize == "bitsandbytes-fp4"
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (True, "fp4", True)
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert QuantizationArguments(load_in_8bit=True).quantization_config().load_in_8bit


def test_a_base_given_with_a_quantization_config_is_refused(tmp_path):
    model, _ = _quantized("bitsandbytes-nf4")
    folder = model.save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="a base_model given is used as it is"):
        HybridModel.from_pretrained(folder, copy.deepcopy(load_base("preset:tiny")[0]), quantization_config=object())
