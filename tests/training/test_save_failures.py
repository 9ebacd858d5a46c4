"""Failures at the edge of the disk are clean: a save that fails leaves the folder as it was before
(every file byte for byte, and it still loads), raises one `SaveError` line naming the folder and
the cause, and ``peft-hybrid train`` exits 1 with that line.

A full disk is faked where the bytes are written: ``os.write`` (every file the library writes
itself) fails with ENOSPC at its Nth call, for every N of a save; the tokenizer (written by
transformers and the tokenizers library, not through ``os.write``) leaves half a
``tokenizer.json`` behind and fails, as it did on a real full disk.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from helpers import tiny_model
from peft_hybrid.cli import main as cli
from peft_hybrid.inference import load_for_inference
from peft_hybrid.serialization import SaveError
from peft_hybrid.training.trainer import HybridTrainer, HybridTrainingArguments

ARGS = dict(
    use_cpu=True,
    report_to="none",
    task="sst2",
    eval_strategy="no",
    load_best_model_at_end=False,
    early_stopping_patience=None,
    bf16=False,
    disable_tqdm=True,
)


def _saved_run(tmp_path: Path) -> tuple[HybridTrainer, Path, dict[str, bytes]]:
    """A trainer whose output folder holds one complete save, and the bytes of every file in it."""
    model, tokenizer = tiny_model("hybrid", task="sst2")
    trainer = HybridTrainer(
        model, HybridTrainingArguments(output_dir=str(tmp_path / "run"), **ARGS), processing_class=tokenizer
    )
    trainer.save_model()
    with torch.no_grad():  # the next save differs from the one on disk
        for tensor in model.adapter_tensors().values():
            tensor.add_(1.0)
    return trainer, tmp_path / "run", _contents(tmp_path / "run")


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_write_at(monkeypatch, n: int, code: int = errno.ENOSPC) -> list[int]:
    real, calls = os.write, [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == n:
            raise OSError(code, os.strerror(code))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return calls


def _writes_of_one_save(tmp_path: Path, monkeypatch) -> int:
    trainer, _, _ = _saved_run(tmp_path / "count")
    calls = _fail_write_at(monkeypatch, 0)
    trainer.save_model()
    monkeypatch.undo()
    return calls[0]


def _assert_as_before(folder: Path, before: dict[str, bytes]) -> None:
    assert _contents(folder) == before, "the failed save changed the folder"
    model, tokenizer = load_for_inference(folder, device="cpu")  # and it still loads, tokenizer included
    assert tokenizer("a film").input_ids and model.hybrid_config.inference is not None


def test_a_full_disk_at_any_write_of_a_save_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    total = _writes_of_one_save(tmp_path, monkeypatch)
    assert total >= 4  # weights, config, card, summary, training_args.json at least
    for n in range(1, total + 1):
        trainer, folder, before = _saved_run(tmp_path / f"n{n}")
        _fail_write_at(monkeypatch, n)
        with pytest.raises(SaveError) as err:
            trainer.save_model()
        monkeypatch.undo()
        message = str(err.value)
        assert message.startswith(f"cannot save {folder}: the disk is full (") and "\n" not in message, message
        _assert_as_before(folder, before)


def _tokenizer_fails_half_written(tokenizer, code: int):
    real = tokenizer.save_pretrained

    def save_pretrained(directory, *args, **kwargs):
        real(directory, *args, **kwargs)
        path = Path(directory) / "tokenizer.json"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        raise OSError(code, os.strerror(code))

    return save_pretrained


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "is read-only")])
def test_a_tokenizer_save_that_fails_half_way_leaves_the_old_tokenizer(tmp_path, monkeypatch, code, cause):
    trainer, folder, before = _saved_run(tmp_path)
    save = _tokenizer_fails_half_written(trainer.processing_class, code)
    monkeypatch.setattr(trainer.processing_class, "save_pretrained", save)
    with pytest.raises(SaveError, match=cause):
        trainer.save_model()
    _assert_as_before(folder, before)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporary files were left behind"


def test_a_read_only_folder_is_named_and_left_as_it_was(tmp_path):
    trainer, folder, before = _saved_run(tmp_path)
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write into read-only folders (root)")
        with pytest.raises(SaveError) as err:
            trainer.save_model()
    finally:
        folder.chmod(0o755)
    assert str(err.value).startswith(f"cannot save {folder}: no write permission") and "\n" not in str(err.value)
    _assert_as_before(folder, before)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["adapter", "tokenizer", "results.json"])
def test_train_exits_1_with_one_line_when_the_final_save_meets_a_full_disk(tmp_path, monkeypatch, capsys, target):
    """``--save_strategy no``: the final save is the only one; the disk fills up during it (or after it)."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from test_malformed_input import QUICK, samsum_csv

    samsum_csv(tmp_path / "train.csv")
    run = tmp_path / "run"
    real_save, real_write, real_tokenizer_save = HybridTrainer.save_model, os.write, TokenizersBackend.save_pretrained
    final = {"on": False}

    def save_model(self, *args, **kwargs):
        final["on"] = True
        return real_save(self, *args, **kwargs)

    def write(fd, data):
        full = final["on"] if target == "adapter" else target == "results.json" and (run / "README.md").exists()
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def tokenizer_save(self, directory, *args, **kwargs):
        if target == "tokenizer" and final["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_tokenizer_save(self, directory, *args, **kwargs)

    monkeypatch.setattr(HybridTrainer, "save_model", save_model)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(TokenizersBackend, "save_pretrained", tokenizer_save)
    argv = ["train", "--task", "samsum", *QUICK, "--train_file", str(tmp_path / "train.csv"), "--output_dir", str(run)]
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    where = run / "results.json" if target == "results.json" else run
    assert line.startswith(f"peft-hybrid train: error: cannot save {where}: the disk is full"), line
