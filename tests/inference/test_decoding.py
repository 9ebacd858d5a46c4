"""The one decode helper: every reader of generated ids gets the same text from it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_hybrid import HybridConfig, HybridModel, generate_texts
from peft_hybrid.inference.decoding import decode_texts, decode_window, decoded_rows
from peft_hybrid.offline import t5_from_preset
from peft_hybrid.serve.formatting import decode_output

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "peft_hybrid"


@pytest.fixture(scope="module")
def tokenizer():
    return t5_from_preset("tiny")[1]


def test_tensors_arrays_and_lists_decode_alike_and_as_the_tokenizer_does(tokenizer):
    texts = ["Amy meets Ben at noon.", "  a witty film ", "SELECT col FROM t"]
    ids = tokenizer(texts, padding=True, return_tensors="pt").input_ids
    expected = [
        t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    ]
    assert expected == ["Amy meets Ben at noon.", "a witty film", "SELECT col FROM t"]
    assert decode_texts(tokenizer, ids) == expected
    assert decode_texts(tokenizer, ids.numpy()) == expected
    assert decode_texts(tokenizer, ids.tolist()) == expected


def test_the_trainers_minus_100_padding_reads_as_padding(tokenizer):
    ids = tokenizer(["Amy meets Ben."]).input_ids[0]
    padded = np.array([ids + [-100, -100], [-100] * (len(ids) + 2)])
    assert decode_texts(tokenizer, padded) == ["Amy meets Ben.", ""]


def test_the_server_decodes_one_row_as_offline_generation_does(tokenizer):
    ids = tokenizer(["Amy meets Ben."]).input_ids[0]
    assert decode_output(tokenizer, ids) == decode_texts(tokenizer, [ids])[0] == "Amy meets Ben."
    assert decode_output(tokenizer, []) == ""
    assert decode_window(tokenizer, ids) == "Amy meets Ben."  # a window: the same settings, unstripped


def test_generate_texts_returns_the_decoded_generation():
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="hybrid", num_virtual_tokens=4), tokenizer=tokenizer).eval()
    texts = ["Amy: lunch at noon?\r\nBen: Sure.", "a charming film"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=6)
    assert generate_texts(model, tokenizer, texts, max_new_tokens=6, progress=False) == decode_texts(tokenizer, ids)


def test_decoded_rows_pairs_in_order_and_refuses_unequal_lengths():
    assert decoded_rows(["a", "b"], ["x", "y"], ["p", "q"]) == [
        {"source": "a", "reference": "x", "prediction": "p"},
        {"source": "b", "reference": "y", "prediction": "q"},
    ]
    with pytest.raises(ValueError):
        decoded_rows(["a", "b"], ["x"], ["y", "z"])


def test_no_other_module_decodes_generated_ids_itself():
    # A second `tokenizer.decode(...)` / `batch_decode(...)` drifts (one strips, one cleans up spaces).
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "inference" / "decoding.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "batch_decode" or (
                    node.func.attr == "decode" and "tok" in ast.unparse(node.func.value)
                ):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == [], f"decode with peft_hybrid.inference.decoding.decode_texts instead: {offenders}"
