import pytest
import torch

from peft_hybrid import HybridConfig, HybridModel
from peft_hybrid.offline import t5_from_preset

PAPER_COUNTS = {"hybrid": 465_408, "lora": 442_368, "prompt": 23_040, "full": 247_577_856, "none": 0}


@pytest.mark.parametrize("mode, expected", PAPER_COUNTS.items())
def test_flan_t5_base_trainable_counts_match_the_paper(mode, expected):
    base, _ = t5_from_preset("flan-t5-base", device="meta")
    model = HybridModel(base, HybridConfig(mode=mode))
    assert model.num_parameters(trainable_only=True) == expected


def test_flan_t5_base_has_its_own_lm_head():
    base, _ = t5_from_preset("flan-t5-base", device="meta")
    assert base.lm_head.weight is not base.shared.weight
    assert base.encoder.embed_tokens.weight is base.shared.weight
    assert sum(p.numel() for p in base.parameters()) == 247_577_856


def test_tokenizer_has_t5_layout():
    _, tok = t5_from_preset("tiny")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok("Amy: hi").input_ids[-1] == 1


def test_same_seed_same_weights_and_unknown_preset():
    a, _ = t5_from_preset("tiny", seed=3)
    b, _ = t5_from_preset("tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="tiny"):
        t5_from_preset("t5-xxl")


def test_word_tokenizer_keeps_whole_words_in_t5_layout(tmp_path):
    from transformers import AutoTokenizer

    from peft_hybrid.offline.presets import word_tokenizer
    from peft_hybrid.offline.synthetic import tokenizer_corpus

    tok = word_tokenizer(tokenizer_corpus(1), 400)
    text = "Olga has the map and will bring it back to Ben Friday at 9 pm."
    assert tok.tokenize(text) == ["▁" + w for w in text[:-1].split()] + ["."]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1 and len(tok) == 500
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    # The same lines give the same vocabulary; the saved tokenizer reads back to the same ids.
    assert word_tokenizer(tokenizer_corpus(1), 400).get_vocab() == tok.get_vocab()
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(str(tmp_path))(text).input_ids == tok(text).input_ids


def test_a_tied_t5_model_reloads_equal_and_without_a_tied_weights_warning(tmp_path):
    import logging

    from transformers import AutoModelForSeq2SeqLM

    from peft_hybrid.offline import offline_tokenizer
    from peft_hybrid.offline.presets import PRESETS, t5_model

    model = t5_model(PRESETS["tiny"], offline_tokenizer(), seed=1, tied_lm_head=True, dropout_rate=0.0)
    assert model.lm_head.weight is model.shared.weight and model.config.dropout_rate == 0.0
    model.save_pretrained(tmp_path)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, use_safetensors=True).eval()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.inference_mode():
        logits = [m(input_ids=ids, decoder_input_ids=ids).logits for m in (model, reloaded)]
    assert torch.equal(*logits)
