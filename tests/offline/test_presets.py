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
