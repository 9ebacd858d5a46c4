"""One table maps failures to exit codes for every command: 1 the work failed (the Hub, a full disk), 2 bad input."""

from __future__ import annotations

import ast
import errno
import importlib
import os
from pathlib import Path

import pytest

from peft_hybrid import AdapterLoadError, DataError, HubAuthenticationError, HubUnreachableError
from peft_hybrid.cli import COMMANDS, main
from peft_hybrid.cli.errors import MissingExtraError, exit_code, report_failures
from peft_hybrid.cli.train import run_recipe
from peft_hybrid.serialization import SaveError
from peft_hybrid.training.run_folder import RunFolderError

CLI = Path(__file__).resolve().parents[2] / "src" / "peft_hybrid" / "cli"


@pytest.mark.parametrize(
    "error, code",
    [
        (HubUnreachableError("the Hub is unreachable"), 1),
        (HubAuthenticationError("authentication failed"), 1),  # a PermissionError too: the Hub row wins
        (SaveError("cannot save runs/x: the disk is full"), 1),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 1),
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), 1),
        (ConnectionError("connection reset"), 1),
        (MissingExtraError("pip install 'peft-hybrid[serve]'"), 1),
        (ValueError("--r 0: pass a positive rank."), 2),
        (DataError("train.csv row 3: empty 'summary'"), 2),
        (AdapterLoadError("'me/never' does not exist"), 2),
        (RunFolderError("runs/x holds another run"), 2),
        (FileNotFoundError("dev.tsv not found"), 2),
        (NotADirectoryError("runs/x is a file"), 2),
        (PermissionError("Cannot write into runs/x: no write permission."), 2),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "in.txt"), 2),
        (KeyError("unknown task 'sst3'; known tasks: samsum, sst2, wikisql"), 2),
        (KeyboardInterrupt(), 130),
    ],
)
def test_the_documented_codes(error, code):
    assert exit_code(error)[0] == code


def test_messages_are_one_line_and_say_what_happened(capsys):
    assert exit_code(KeyError("unknown task 'sst3'"))[1] == "unknown task 'sst3'"  # not KeyError's quoted repr
    disk = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/optimizer.pt")
    assert exit_code(disk)[1].startswith("cannot save runs/x/optimizer.pt: the disk is full")

    def fails():
        raise DataError("train.csv row 3: empty 'summary'")

    assert report_failures("peft-hybrid train", fails) == 2
    assert capsys.readouterr().err == "peft-hybrid train: error: train.csv row 3: empty 'summary'\n"


def test_a_bug_keeps_its_traceback():
    def buggy():
        raise RuntimeError("a bug")

    assert exit_code(RuntimeError("a bug")) is None
    assert exit_code(OSError(errno.EIO, "I/O error")) is None
    with pytest.raises(RuntimeError, match="a bug"):
        report_failures("peft-hybrid train", buggy)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("error, code", [(HubUnreachableError("offline"), 1), (ValueError("bad --x"), 2)])
def test_every_subcommand_reports_through_the_table(command, error, code, monkeypatch, capsys):
    module = importlib.import_module(COMMANDS[command][0])

    def run(args):
        raise error

    monkeypatch.setattr(module, "add_parser", lambda subparsers: subparsers.add_parser(command))  # no required args
    monkeypatch.setattr(module, "run", run)
    assert main([command]) == code
    assert capsys.readouterr().err.strip() == f"peft-hybrid {command}: error: {error}"


def test_recipes_report_through_the_same_table(tmp_path, capsys):
    assert run_recipe(["--task", "sst2", "--r", "0", "--output_dir", str(tmp_path)], prog="recipes/sst2.py") == 2
    assert capsys.readouterr().err.startswith("recipes/sst2.py: error: ")


def test_no_command_maps_errors_itself():
    # A second mapping drifts from the table (five copies of `except HubError` once did).
    found = []
    for path in sorted(CLI.glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                if names & {"HubError", "SaveError", "OSError", "ConnectionError"}:
                    found.append(f"cli/{path.name}:{node.lineno}")
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and node.value.value in (1, 2):
                found.append(f"cli/{path.name}:{node.lineno}")
    assert found == [], f"raise instead, and let peft_hybrid.cli.errors map it: {found}"
