"""The local Hub server, driven by the real huggingface_hub client (no mocks)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from peft_hybrid.hub_server.server import HubServer  # noqa: E402

# A token nobody owns; it must not end up in the server's files or logs either.
WRONG_TOKEN = "hf_" + "0123456789abcdef" * 2
BIG_SIZE = 10 * 1024 * 1024 + 12_345  # above the Hub's 10 MiB threshold: always LFS


def api_for(server: HubServer, user: str | None) -> HfApi:
    return HfApi(endpoint=server.url, token=server.token(user) if user else False)


def new_repo(server: HubServer, user: str = "alice", **kwargs) -> str:
    repo_id = f"{user}/t-{uuid.uuid4().hex[:10]}"
    api_for(server, user).create_repo(repo_id, **kwargs)
    return repo_id


def make_folder(root: Path, big: bytes | None = None, text: str = "v1") -> dict[str, bytes]:
    files = {
        "README.md": b"---\nlicense: apache-2.0\ntags: [peft]\n---\n# Adapter\n",
        "config.json": f'{{"version": "{text}"}}'.encode(),
        "nested/deeper/notes.txt": f"notes {text}\n".encode(),
        "plot.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    }
    if big is not None:
        files["weights.safetensors"] = big
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def download(server: HubServer, repo_id: str, filename: str, cache: Path, user: str | None = "alice", **kw) -> bytes:
    token = server.token(user) if user else False
    return Path(
        hf_hub_download(repo_id, filename, endpoint=server.url, token=token, cache_dir=cache, **kw)
    ).read_bytes()


def test_upload_folder_round_trip_is_byte_identical_and_reupload_sends_nothing(hub_online, tmp_path):
    server, api = hub_online, api_for(hub_online, "alice")
    repo_id = new_repo(server)
    big = os.urandom(BIG_SIZE)
    files = make_folder(tmp_path / "src", big=big)

    before = server.stats()
    first = api.upload_folder(folder_path=tmp_path / "src", repo_id=repo_id, commit_message="Add adapter")
    after_first = server.stats()
    assert after_first["lfs_uploads"] - before["lfs_uploads"] == 2  # weights + png
    assert after_first["lfs_bytes_uploaded"] - before["lfs_bytes_uploaded"] == BIG_SIZE + len(files["plot.png"])

    assert set(api.list_repo_files(repo_id)) == {".gitattributes", *files}
    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if hasattr(f, "size")}
    assert tree["weights.safetensors"].lfs.sha256 == hashlib.sha256(big).hexdigest()
    assert tree["plot.png"].lfs is not None and tree["config.json"].lfs is None
    info = api.model_info(repo_id)
    assert info.sha == first.oid and not info.private
    assert repo_id in {m.id for m in api.list_models(author="alice")}

    snapshot = Path(
        snapshot_download(repo_id, endpoint=server.url, token=server.token("alice"), cache_dir=tmp_path / "cache")
    )
    for rel, data in files.items():
        assert (snapshot / rel).read_bytes() == data, rel

    # Same content again: the client learns every oid at preupload and sends no file, no commit.
    again = api.upload_folder(folder_path=tmp_path / "src", repo_id=repo_id)
    assert again.oid == first.oid
    assert server.stats() == after_first
    assert [c.title for c in api.list_repo_commits(repo_id)] == ["Add adapter", "initial commit"]


def test_range_requests_and_download_headers(hub_online):
    server, api = hub_online, api_for(hub_online, "alice")
    repo_id = new_repo(server)
    data = bytes(range(256)) * 40
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id=repo_id)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{server.url}/{repo_id}/resolve/main/blob.bin", headers={"Range": "bytes=100-199"}
    )
    with opener.open(request) as response:
        assert response.status == 206
        assert response.read() == data[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        assert response.headers["X-Repo-Commit"] == commit.oid
        assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert response.headers["X-Linked-Size"] == str(len(data))


def test_private_repo_is_hidden_from_anonymous_and_other_users(hub_online, tmp_path):
    server = hub_online
    repo_id = new_repo(server, private=True)
    api_for(server, "alice").upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=repo_id)
    assert download(server, repo_id, "s.txt", tmp_path / "a") == b"secret"
    assert api_for(server, "alice").model_info(repo_id).private

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        api_for(server, None).model_info(repo_id)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as other:
        api_for(server, "bob").model_info(repo_id)
    assert other.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        download(server, repo_id, "s.txt", tmp_path / "b", user="bob")
    with pytest.raises(RepositoryNotFoundError):
        download(server, repo_id, "s.txt", tmp_path / "c", user=None)
    assert repo_id not in {m.id for m in api_for(server, "bob").list_models(author="alice")}


def test_wrong_token_is_unauthorized(hub_online):
    server = hub_online
    repo_id = new_repo(server)
    bad = HfApi(endpoint=server.url, token=WRONG_TOKEN)
    with pytest.raises(HfHubHTTPError) as info_error:
        bad.model_info(repo_id)
    assert info_error.value.response.status_code == 401
    assert "unauthorized" in str(info_error.value).lower() and "invalid credentials" in str(info_error.value).lower()
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as whoami_error:
        bad.whoami()
    assert whoami_error.value.response.status_code == 401
    assert api_for(server, "alice").whoami()["name"] == "alice"


def test_writes_outside_ones_namespace_are_refused(hub_online):
    server = hub_online
    with pytest.raises(HfHubHTTPError) as create_error:
        api_for(server, "alice").create_repo(f"bob/t-{uuid.uuid4().hex[:10]}")
    assert create_error.value.response.status_code == 403
    repo_id = new_repo(server)  # public: bob may read it, never write to it
    with pytest.raises(HfHubHTTPError) as push_error:
        api_for(server, "bob").upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert push_error.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exists_error:
        api_for(server, "alice").create_repo(repo_id)
    assert exists_error.value.response.status_code == 409
    assert api_for(server, "alice").create_repo(repo_id, exist_ok=True).repo_id == repo_id


def test_branches_tags_and_revisions(hub_online, tmp_path):
    server, api = hub_online, api_for(hub_online, "alice")
    repo_id = new_repo(server)
    make_folder(tmp_path / "v1", text="v1")
    v1 = api.upload_folder(folder_path=tmp_path / "v1", repo_id=repo_id)
    api.create_tag(repo_id, tag="v1.0")
    api.create_branch(repo_id, branch="dev", revision="v1.0")
    api.upload_file(path_or_fileobj=b'{"version": "v2"}', path_in_repo="config.json", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo_id, revision="dev")

    assert download(server, repo_id, "config.json", tmp_path / "c") == b'{"version": "v2"}'
    assert download(server, repo_id, "config.json", tmp_path / "c", revision="v1.0") == b'{"version": "v1"}'
    assert download(server, repo_id, "config.json", tmp_path / "c", revision=v1.oid) == b'{"version": "v1"}'
    assert download(server, repo_id, "dev.txt", tmp_path / "c", revision="dev") == b"dev only"
    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", v1.oid)]

    with pytest.raises(HfHubHTTPError) as duplicate:
        api.create_tag(repo_id, tag="v1.0")
    assert duplicate.value.response.status_code == 409
    api.delete_tag(repo_id, tag="v1.0")
    api.delete_branch(repo_id, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="dev")

    # Deletions and a stale parent commit.
    head = api.model_info(repo_id).sha
    api.delete_folder("nested", repo_id=repo_id)
    assert not any(p.startswith("nested/") for p in api.list_repo_files(repo_id))
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(
            repo_id, [CommitOperationAdd("late.txt", b"late")], commit_message="late", parent_commit=head
        )
    assert stale.value.response.status_code == 412


def test_missing_entries_and_revisions_raise_the_hub_errors(hub_online, tmp_path):
    server = hub_online
    repo_id = new_repo(server)
    with pytest.raises(EntryNotFoundError):
        download(server, repo_id, "nope.json", tmp_path)
    with pytest.raises(RevisionNotFoundError):
        download(server, repo_id, ".gitattributes", tmp_path, revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api_for(server, "alice").model_info("alice/never-created")
    api_for(server, "alice").delete_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api_for(server, "alice").model_info(repo_id)
    assert not api_for(server, "alice").file_exists("alice/never-created", "x")


def test_restarted_server_serves_the_same_repos_even_after_a_crash(hub_online, tmp_path):
    users = {"carol": hub_online.token("alice")}  # reuse a token the leak test below looks for
    data_dir = tmp_path / "hub"
    with HubServer(data_dir, users) as first:
        api = HfApi(endpoint=first.url, token=users["carol"])
        api.create_repo("carol/kept", private=True)
        commit = api.upload_file(path_or_fileobj=b"\0" * 2048, path_in_repo="w.bin", repo_id="carol/kept")
        first.kill()  # SIGKILL: no graceful shutdown
    with HubServer(data_dir, users) as second:
        path = hf_hub_download(
            "carol/kept", "w.bin", endpoint=second.url, token=users["carol"], cache_dir=tmp_path / "c"
        )
        assert Path(path).read_bytes() == b"\0" * 2048
        assert HfApi(endpoint=second.url, token=users["carol"]).model_info("carol/kept").sha == commit.oid
    assert_no_secret_in(data_dir, [users["carol"]])


PEFT_CHILD = textwrap.dedent(
    """
    import sys, torch
    from peft import PeftModel
    from transformers import T5ForConditionalGeneration
    base_dir, repo_id, out = sys.argv[1:]
    base = T5ForConditionalGeneration.from_pretrained(base_dir).eval()
    model = PeftModel.from_pretrained(base, repo_id).eval()
    ids = torch.arange(1, 9).unsqueeze(0)
    with torch.no_grad():
        torch.save(model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits, out)
    """
)


@pytest.mark.slow
def test_peft_adapter_pushed_to_the_server_loads_with_from_pretrained(hub_online, tmp_path):
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    server = hub_online
    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    base = T5ForConditionalGeneration(config).eval()
    base.save_pretrained(tmp_path / "base")
    # init_lora_weights=False: a non-zero adapter, so loading it (or not) shows in the logits.
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q", "v"], init_lora_weights=False, task_type="SEQ_2_SEQ_LM")
    model = get_peft_model(base, lora).eval()
    ids = torch.arange(1, 9).unsqueeze(0)
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits
        with model.disable_adapter():
            plain = model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits
    assert not torch.allclose(expected, plain)
    model.save_pretrained(tmp_path / "adapter")
    repo_id = new_repo(server, private=True)
    api_for(server, "alice").upload_folder(folder_path=tmp_path / "adapter", repo_id=repo_id)

    env = server.subprocess_env(token=server.token("alice"), HF_HOME=str(tmp_path / "hf-home"))
    out = tmp_path / "logits.pt"
    run = subprocess.run(
        [sys.executable, "-c", PEFT_CHILD, str(tmp_path / "base"), repo_id, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert torch.equal(torch.load(out), expected)


def assert_no_secret_in(folder: Path, secrets: list[str]) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"a token leaked into {path}"


def test_tokens_never_reach_the_data_dir_or_the_logs(hub_online):
    """Runs last in this file, after every push, refusal and download above."""
    server = hub_online
    secrets = [server.token("alice"), server.token("bob"), WRONG_TOKEN]
    api_for(server, "alice").model_info(new_repo(server))  # at least one authenticated call
    assert (server.data_dir / "server.log").stat().st_size > 0  # the log exists and is searched
    assert_no_secret_in(server.data_dir, secrets)
