"""Hub integration against the local Hub server with the real huggingface_hub client: automatic
push from HybridTrainer, loading by repo id in a fresh process, and every failure mode."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import textwrap
import threading
import time
from pathlib import Path

import datasets
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from huggingface_hub import HfApi  # noqa: E402

from helpers import FAST_TRAINING, run_child  # noqa: E402
from peft_hybrid import HybridConfig, HybridModel  # noqa: E402
from peft_hybrid.cli import main as cli_main  # noqa: E402
from peft_hybrid.hub.upload import HubAccessError, HubAuthenticationError, HubUnavailableError, push_folder  # noqa: E402
from peft_hybrid.hub_server.server import HubServer  # noqa: E402
from peft_hybrid.offline import t5_from_preset  # noqa: E402
from peft_hybrid.offline.synthetic import dialogue_summary_pairs  # noqa: E402
from peft_hybrid.tasks import get_task  # noqa: E402
from peft_hybrid.training.data import Seq2SeqCollator, tokenize_dataset  # noqa: E402
from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments  # noqa: E402

WRONG_TOKEN = "hf_" + "feedface" * 4
PROMPTS = ["Amy: Are we still on for lunch?\r\nBen: Yes, 12:30 at the deli.", "Sam: I'll be 10 minutes late."]
GENERATE = dict(max_new_tokens=12, do_sample=False, num_beams=1)

# A fresh process: loads the pushed adapter by repo id, generates, reads the card back, then
# tries the failure cases; prints one JSON line per step.
CHILD = textwrap.dedent(
    """
    import json, sys
    from huggingface_hub import ModelCard, constants
    from peft_hybrid import HybridModel
    from peft_hybrid.offline import t5_from_preset
    repo_id, cache, out, wrong, bob = sys.argv[1:]
    prompts, generate = json.loads(sys.stdin.read())
    result = {}

    def load(repo, **kw):
        base, tok = t5_from_preset("tiny")
        kw.setdefault("cache_dir", cache)
        model = HybridModel.from_pretrained(repo, base_model=base, **kw).eval()
        batch = tok(prompts, return_tensors="pt", padding=True)
        return model.generate(**batch, **generate).tolist()

    def error(repo, **kw):
        try:  # an empty cache: with a warm one, huggingface_hub falls back to the cached copy
            load(repo, cache_dir=cache + "-cold", **kw)
        except Exception as err:
            return [type(err).__name__, str(err)]
        return None

    result["ids"] = load(repo_id)
    card = ModelCard.load(repo_id)
    result["card"] = [[r.metric_name, r.metric_type, r.metric_value, r.dataset_type, r.dataset_split, r.task_type]
                      for r in card.data.eval_results]
    result["card_text"] = str(card)
    result["wrong_token"] = error(repo_id, token=wrong)
    result["other_user"] = error(repo_id, token=bob)
    result["missing"] = error("alice/never-pushed")
    constants.HF_HUB_OFFLINE = True
    result["offline_cached"] = load(repo_id)
    result["offline_uncached"] = error("alice/never-pushed")
    with open(out, "w") as f:
        json.dump(result, f)
    """
)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_no_secret(folder: Path, texts: list[str], secrets: list[str]) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            for secret in secrets:
                assert secret.encode() not in path.read_bytes(), f"a token leaked into {path}"
    for text in texts:
        for secret in secrets:
            assert secret not in text


def _samsum(n: int, seed: int, tokenizer) -> datasets.Dataset:
    rows = datasets.Dataset.from_list(
        [{"source": r["dialogue"], "target": r["summary"]} for r in dialogue_summary_pairs(n, seed)]
    )
    formatted = get_task("samsum").format_dataset(rows, use_task_tags=False)
    tokens, _ = tokenize_dataset(formatted, tokenizer, 64, 24)
    return datasets.concatenate_datasets([formatted, tokens], axis=1)


def _saved_adapter(folder: Path, seed: int = 0) -> Path:
    base, tokenizer = t5_from_preset("tiny", seed=seed)
    model = HybridModel(base, HybridConfig(task="samsum", num_virtual_tokens=4), tokenizer=tokenizer)
    with torch.no_grad():
        for p in model.adapter_tensors().values():
            p.add_(0.1)
    return model.save_pretrained(folder)


@pytest.mark.slow
def test_trainer_pushes_and_a_fresh_process_loads_the_same_model(hub_online, tmp_path, caplog, capsys):
    server = hub_online
    alice, bob = server.token("alice"), server.token("bob")
    repo_id = "alice/tiny-samsum-hybrid"
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel(base, HybridConfig(mode="hybrid", num_virtual_tokens=4), tokenizer=tokenizer)
    args = HybridTrainingArguments(
        output_dir=str(tmp_path / "run"),
        task="samsum",
        **FAST_TRAINING,
        max_steps=4,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        early_stopping_patience=None,
        generation_max_length=8,
        push_to_hub=True,
        hub_model_id=repo_id,
        hub_token=alice,
        hub_private_repo=True,
        hub_strategy="every_save",
        hub_endpoint=server.url,
    )
    trainer = HybridTrainer(
        model,
        args,
        train_dataset=_samsum(32, 0, tokenizer),
        eval_dataset=_samsum(8, 1, tokenizer),
        processing_class=tokenizer,
        data_collator=Seq2SeqCollator(tokenizer),
    )
    with caplog.at_level(logging.DEBUG):
        trainer.train()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected_ids = trainer.model.eval().generate(**batch, **GENERATE).tolist()

    api = HfApi(endpoint=server.url, token=alice)
    assert api.model_info(repo_id).private
    files = set(api.list_repo_files(repo_id))
    assert {
        "hybrid_config.json",
        "adapter_model.safetensors",
        "README.md",
        "training_summary.json",
        "training_curve.png",
    } <= files
    assert {"eval_metrics-2.json", "eval_metrics-4.json"} <= files
    assert not any(f.startswith("checkpoint-") or "predictions" in f or f.endswith((".bin", ".pt")) for f in files)
    assert [c.title for c in api.list_repo_commits(repo_id)][0] == "End of training"

    out = tmp_path / "child.json"
    env = server.subprocess_env(token=alice, HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    args = [repo_id, str(tmp_path / "cache"), str(out), WRONG_TOKEN, bob]
    child, child_stderr = run_child(CHILD, args, [PROMPTS, GENERATE], out, env, timeout=180)
    assert child["ids"] == expected_ids
    assert child["offline_cached"] == expected_ids  # HF_HUB_OFFLINE with a warm cache: no network needed

    # The card's model-index holds exactly the metrics the trainer logged for the adapter it pushed
    # (load_best_model_at_end: the best checkpoint's evaluation).
    summary = trainer.training_summary
    logged = next(e for e in summary.evaluations if e["step"] == trainer.state.best_global_step)
    expected_card = [
        [name, kind, logged[f"eval_{key}"], "knkarthick/samsum", "validation", "summarization"]
        for key, kind, name in get_task("samsum").card_metadata["metrics"]
    ]
    assert child["card"] == expected_card
    assert f'load_for_inference("{repo_id}")' in child["card_text"]

    name, message = child["wrong_token"]
    assert (
        name == "HubAuthenticationError" and "Authentication failed" in message and "not found" not in message.lower()
    )
    name, message = child["other_user"]
    assert name == "AdapterLoadError" and "private" in message and repo_id in message
    name, message = child["missing"]
    assert name == "AdapterLoadError" and "does not exist" in message
    name, message = child["offline_uncached"]
    # Offline is a Hub failure (except HubError catches it), not a bad adapter.
    assert name == "HubUnreachableError" and "HF_HUB_OFFLINE" in message and "not in the Hub cache" in message

    captured = capsys.readouterr()
    secrets = [alice, bob, WRONG_TOKEN]
    _assert_no_secret(
        tmp_path / "run", [caplog.text, captured.out, captured.err, child_stderr, child["card_text"]], secrets
    )


def test_push_sends_only_changed_files_and_the_cli_reports_bad_tokens(hub_online, tmp_path, capsys):
    server = hub_online
    folder = _saved_adapter(tmp_path / "adapter")
    before = _tree_digest(folder)
    repo_id = "alice/cli-push"
    assert cli_main(["push", str(folder), repo_id, "--token", server.token("alice"), "--endpoint", server.url]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{server.url}/{repo_id}/commit/")
    api = HfApi(endpoint=server.url, token=server.token("alice"))
    assert set(api.list_repo_files(repo_id)) == {
        ".gitattributes",
        "hybrid_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    # The card is uploaded as saved (no placeholder rewritten at upload): its snippet loads the folder it is in.
    card = Path(api.hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "cache")).read_bytes()
    assert card == (folder / "README.md").read_bytes() and b'load_for_inference(".")' in card
    stats = server.stats()
    again = push_folder(folder, repo_id, token=server.token("alice"), endpoint=server.url)
    assert server.stats() == stats and again.oid == api.model_info(repo_id).sha
    assert _tree_digest(folder) == before

    code = cli_main(["push", str(folder), repo_id, "--token", WRONG_TOKEN, "--endpoint", server.url])
    err = capsys.readouterr().err
    assert code == 1 and "Authentication failed" in err and WRONG_TOKEN not in err


def test_wrong_token_and_other_users_repos_are_refused_without_retries(hub_online, tmp_path, caplog, sleeps):
    server = hub_online
    folder = _saved_adapter(tmp_path / "adapter")
    base, tokenizer = t5_from_preset("tiny")
    model = HybridModel.from_pretrained(folder, base_model=base)
    model.push_to_hub("alice/private-one", private=True, token=server.token("alice"), endpoint=server.url)
    assert HfApi(endpoint=server.url, token=server.token("alice")).model_info("alice/private-one").private

    with caplog.at_level(logging.WARNING), pytest.raises(HubAuthenticationError, match="Authentication failed") as bad:
        model.push_to_hub("alice/private-one", token=WRONG_TOKEN, endpoint=server.url, backoff=5.0)
    assert "alice/private-one" in str(bad.value) and "not found" not in str(bad.value).lower()
    with pytest.raises(HubAccessError, match="may not write") as refused:
        model.push_to_hub("alice/private-one", token=server.token("bob"), endpoint=server.url, backoff=5.0)
    assert "alice/private-one" in str(refused.value)
    with pytest.raises(HubAccessError):
        push_folder(folder, "alice/bobs-attempt", token=server.token("bob"), endpoint=server.url, backoff=5.0)
    assert sleeps == [] and "retry" not in caplog.text  # refusals are final, not retried
    for text in (str(bad.value), str(refused.value), caplog.text):
        assert WRONG_TOKEN not in text and server.token("bob") not in text


def test_unreachable_hub_is_retried_then_reported_and_nothing_local_changes(hub_online, tmp_path, caplog):
    folder = _saved_adapter(tmp_path / "adapter")
    before = _tree_digest(folder)
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with caplog.at_level(logging.WARNING), pytest.raises(HubUnavailableError) as info:
        push_folder(folder, "alice/unreachable", token="hf_unused", endpoint=url, retries=2, backoff=0.01)
    message = str(info.value)
    assert "alice/unreachable" in message and "after 3 attempt(s)" in message and "peft-hybrid push" in message
    assert caplog.text.count("retry") == 2
    assert "hf_unused" not in message + caplog.text
    assert _tree_digest(folder) == before


@pytest.mark.slow
def test_server_killed_mid_push_then_a_later_push_uploads_only_what_is_missing(hub_online, tmp_path):
    users = {"alice": "hf_" + "a1" * 16}
    folder = _saved_adapter(tmp_path / "adapter")
    # An image, uploaded through LFS; the server stalls each LFS upload once its first bytes are on disk.
    (folder / "attribution_heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(4 * 1024 * 1024))
    before = _tree_digest(folder)
    data_dir = tmp_path / "hub"
    server = HubServer(data_dir, users, stall_uploads=True).start()
    outcome: dict[str, BaseException] = {}

    def push() -> None:
        try:
            push_folder(folder, "alice/killed", token=users["alice"], endpoint=server.url, retries=0)
        except BaseException as err:  # handed to the test thread
            outcome["error"] = err

    worker = threading.Thread(target=push)
    worker.start()
    # Polls a state that, stalled, cannot pass by; the deadline only turns a hang into a failure.
    deadline = time.monotonic() + 600
    while not any(p.stat().st_size > 0 for p in (data_dir / "blobs" / "tmp").iterdir()):
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.01)
    server.kill()
    worker.join(600)
    assert isinstance(outcome.get("error"), HubUnavailableError), outcome
    assert "alice/killed" in str(outcome["error"]) and "Nothing local was changed" in str(outcome["error"])
    assert _tree_digest(folder) == before

    with HubServer(data_dir, users) as restarted:
        api = HfApi(endpoint=restarted.url, token=users["alice"])
        lfs_files = ["adapter_model.safetensors", "attribution_heatmap.png", "training_curve.png"]
        lfs_files = [f for f in lfs_files if (folder / f).is_file()]
        digests = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in lfs_files}
        missing = [f for f in lfs_files if not (data_dir / "blobs" / digests[f][:2] / digests[f]).is_file()]
        assert "attribution_heatmap.png" in missing
        commit = push_folder(folder, "alice/killed", token=users["alice"], endpoint=restarted.url)
        stats = restarted.stats()
        assert stats["lfs_uploads"] == len(missing)
        assert stats["lfs_bytes_uploaded"] == sum((folder / f).stat().st_size for f in missing)
        assert api.model_info("alice/killed").sha == commit.oid
        tree = {f.path: f for f in api.list_repo_tree("alice/killed") if hasattr(f, "size")}
        assert tree["attribution_heatmap.png"].lfs.sha256 == digests["attribution_heatmap.png"]
        push_folder(folder, "alice/killed", token=users["alice"], endpoint=restarted.url)
        assert restarted.stats() == stats  # nothing left to send
    assert _tree_digest(folder) == before
