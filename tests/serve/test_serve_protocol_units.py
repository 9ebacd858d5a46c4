"""In-process: allow-pattern matching, request models, grammar masks, OpenAI stop hold-back, log redaction."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from peft_hybrid.serve.adapters import AdapterCache
from peft_hybrid.serve.requests import Limits, Parameters, RequestError, check_text, parse_request

LIMITS = Limits(max_input_tokens=64, max_new_tokens_limit=32)


@pytest.fixture
def tree(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "a").mkdir(parents=True)
    (allowed / "a" / "deep").mkdir()
    (tmp_path / "outside" / "x").mkdir(parents=True)
    (allowed / "link").symlink_to(tmp_path / "outside" / "x")
    (tmp_path / "alias").symlink_to(allowed)  # a pattern through a symlinked folder still matches
    return tmp_path


def test_folder_patterns_match_resolved_paths_one_segment_per_star(tree):
    cache = AdapterCache(None, {}, allow=[f"{tree}/alias/*", "my-org/*"])
    assert cache.resolve(f"{tree}/allowed/a") == os.path.realpath(tree / "allowed" / "a")
    assert cache.resolve(f"{tree}/alias/a") == os.path.realpath(tree / "allowed" / "a")
    assert cache.resolve("my-org/sst2") == "my-org/sst2"
    for escape in [
        f"{tree}/allowed/../outside/x",  # `..` out of the folder
        f"{tree}/allowed/link",  # a symlink in the folder to one outside it
        f"{tree}/allowed/a/deep",  # `*` is one path segment
        "my-org/../etc",
        "other-org/sst2",
        "my-org/a/b",
    ]:
        assert cache.resolve(escape, quiet=True) is None, escape
        with pytest.raises(RequestError, match="matches no --allow-adapter pattern") as err:
            cache.resolve(escape)
        assert err.value.status == 403


def test_a_hub_pattern_never_matches_a_local_folder_of_that_name(tree, monkeypatch):
    monkeypatch.chdir(tree)
    (tree / "my-org" / "x").mkdir(parents=True)
    cache = AdapterCache(None, {}, allow=["my-org/*"])
    assert cache.resolve("my-org/x", quiet=True) is None
    assert cache.resolve("my-org/y") == "my-org/y"


def test_runtime_names_are_checked_and_unique(tree):
    cache = AdapterCache(None, {"kept": "/x"}, allow=[f"{tree}/allowed/*"])
    with pytest.raises(RequestError, match="already loaded"):
        cache.add("kept", f"{tree}/allowed/a")
    with pytest.raises(RequestError, match="lora_name"):
        cache.add("__base__", f"{tree}/allowed/a")
    cache.add("new", f"{tree}/allowed/a")
    assert cache.sources["new"] == os.path.realpath(tree / "allowed" / "a")
    cache.drain("new")
    with pytest.raises(RequestError, match="being unloaded") as err:
        cache.check("new")
    assert err.value.status == 404


@pytest.mark.parametrize("parameters", [[], 0, "", "x", [1]])
def test_parameters_that_are_not_an_object_are_refused(parameters):
    with pytest.raises(RequestError, match="`parameters`"):
        parse_request({"inputs": "hi", "parameters": parameters}, LIMITS)


def test_unknown_fields_are_ignored_and_every_tgi_parameter_has_a_field():
    from huggingface_hub import TextGenerationInputGenerateParameters

    request = parse_request({"inputs": "hi", "other": 1, "parameters": {"top_k": 3, "not_tgi": 2}}, LIMITS)
    assert request.top_k == 3 and request.do_sample
    assert set(TextGenerationInputGenerateParameters.__dataclass_fields__) <= set(Parameters.model_fields)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"seed": 2**64}, "parameters.seed"),
        ({"seed": -1}, "parameters.seed"),
        ({"temperature": 1e-300}, "parameters.temperature"),
        ({"temperature": float("nan")}, "parameters.temperature"),
        ({"top_p": 1.0}, "parameters.top_p"),
        ({"max_new_tokens": True}, "parameters.max_new_tokens"),
        ({"stop": [""]}, "parameters.stop.0"),
        ({"best_of": 2}, "`best_of` is not supported"),
        ({"frequency_penalty": 0.5}, "`frequency_penalty` is not supported"),
        ({"grammar": {"type": "regex"}}, "parameters.grammar.value"),
    ],
)
def test_bad_parameters_name_the_field(parameters, field):
    with pytest.raises(RequestError, match=field.replace(".", r"\.")) as err:
        parse_request({"inputs": "hi", "parameters": parameters}, LIMITS)
    assert err.value.status == 422


def test_the_largest_seed_and_off_values_are_accepted():
    request = parse_request({"inputs": "hi", "parameters": {"seed": 2**64 - 1, "frequency_penalty": 0.0}}, LIMITS)
    assert request.seed == 2**64 - 1


def test_a_lone_surrogate_anywhere_is_refused_naming_where():
    with pytest.raises(RequestError, match=r"`parameters\.stop\[1\]` holds a lone surrogate"):
        check_text({"inputs": "ok", "parameters": {"stop": ["a", "\ud800"]}})
    check_text({"inputs": "café ☕", "parameters": {"stop": ["é"]}})


def test_grammars_parse_to_specs():
    regex = parse_request({"inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "a|b"}}}, LIMITS)
    assert regex.grammar == ("regex", "a|b")
    as_text = {"type": "json", "value": '{"type": "object"}'}
    assert parse_request({"inputs": "hi", "parameters": {"grammar": as_text}}, LIMITS).grammar == (
        "json",
        '{"type": "object"}',
    )


def test_a_row_grammar_allows_only_its_language_then_only_eos():
    from peft_hybrid.offline import offline_tokenizer
    from peft_hybrid.serve.grammar import GrammarCompiler

    tokenizer = offline_tokenizer()
    compiler = GrammarCompiler(tokenizer)
    row = compiler.processor(("regex", "positive|negative"))
    ids: list[int] = []
    for _ in range(20):
        scores = row(ids, torch.zeros(len(tokenizer)))
        allowed = torch.isfinite(scores).nonzero()[:, 0].tolist()
        token = allowed[-1]
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    assert tokenizer.decode(ids, skip_special_tokens=True) in {"positive", "negative"}
    assert allowed == [tokenizer.eos_token_id]
    with pytest.raises(RequestError, match="regular expression cannot be used"):
        compiler.processor(("regex", "(unclosed"))


def test_openai_stream_holds_back_what_may_start_a_stop():
    from peft_hybrid.serve.openai import _Holdback

    held = _Holdback(("END",))
    assert [held.feed(p) for p in ["ab", "cE", "N", "x", "E"]] == ["ab", "c", "", "ENx", ""]
    assert held.flush(stopped=False) == "E"
    held = _Holdback(("END",))
    assert held.feed("abEN") == "ab"
    assert held.feed("D") == "" and held.flush(stopped=True) == ""


def test_the_access_log_never_shows_query_values():
    from peft_hybrid.serve.server import redact_query

    record = logging.LogRecord("uvicorn.access", 20, "", 0, '%s - "%s %s HTTP/%s" %d', None, None)
    record.args = ("127.0.0.1:1", "GET", "/info?api_key=secret&x=1", "1.1", 200)
    assert redact_query(record) and "secret" not in record.getMessage()
    assert "/info?api_key=<redacted>&x=<redacted>" in record.getMessage()
