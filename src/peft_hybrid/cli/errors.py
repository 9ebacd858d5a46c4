"""The one table from what went wrong to the exit code and the one-line message, for every command.

Every ``peft-hybrid`` subcommand and every ``recipes/<task>.py`` runs through `report_failures`:

- 0: done;
- 1: the work failed, the input was fine: any `peft_hybrid.hub.errors.HubError` (offline,
  unreachable, a rejected token, a refused repo), a save that met a full or read-only disk
  (`peft_hybrid.serialization.SaveError`), another connection failure, a missing extra;
- 2: bad arguments or input (``ValueError`` and its subclasses, such as ``DataError`` and
  ``AdapterLoadError``; a missing file, a path that is not a folder, no permission; an unknown key);
- 130: interrupted (Ctrl-C).

Anything else is a bug: it propagates with its traceback.

Example:
    >>> exit_code(ValueError("--r 0: pass a positive rank."))
    (2, '--r 0: pass a positive rank.')
    >>> from peft_hybrid.hub.errors import HubUnreachableError
    >>> exit_code(HubUnreachableError("the Hub is unreachable"))[0]
    1
    >>> exit_code(RuntimeError("a bug")) is None
    True
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

from peft_hybrid.hub.errors import HubError
from peft_hybrid.serialization import DISK_ERRORS, SaveError, save_failure

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class MissingExtraError(ImportError):
    """A command needs an optional extra that is not installed; the message says what to install."""


def _disk_failure(err: BaseException) -> str | None:
    # A file system error no save of ours wrapped (the Trainer's own optimizer state, say): only
    # writes meet these, so it reads as a failed save. No permission is bad input (below).
    if isinstance(err, OSError) and err.errno in DISK_ERRORS - {errno.EACCES, errno.EPERM}:
        return str(save_failure(err.filename or "the output folder", err))
    return None


def _own_message(err: BaseException) -> str:
    # KeyError quotes its argument; the library's KeyErrors are sentences.
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


# (what went wrong, exit code, its message or None when the error is not this row's); first match wins.
EXIT_CODES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, Callable], ...] = (
    (HubError, EXIT_FAILED, str),
    (SaveError, EXIT_FAILED, str),
    (OSError, EXIT_FAILED, _disk_failure),
    ((ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError), EXIT_USAGE, _own_message),
    (ConnectionError, EXIT_FAILED, str),  # outside the Hub client, e.g. datasets' own download
    (MissingExtraError, EXIT_FAILED, str),
    (KeyboardInterrupt, EXIT_INTERRUPTED, lambda err: "interrupted"),
)


def exit_code(err: BaseException) -> tuple[int, str] | None:
    """``(exit code, message)`` for ``err``, or ``None`` when it is not an error a command reports (a bug)."""
    for kinds, code, message in EXIT_CODES:
        if isinstance(err, kinds):
            text = message(err)
            if text is not None:
                return code, text
    return None


def report_failures(prog: str, work: Callable[[], int | None]) -> int:
    """Run ``work`` and return its exit code; a failure of `EXIT_CODES` prints ``<prog>: error: <message>``."""
    try:
        return int(work() or EXIT_OK)
    except (Exception, KeyboardInterrupt) as err:
        found = exit_code(err)
        if found is None:
            raise
        code, message = found
        print(f"{prog}: {message}" if code == EXIT_INTERRUPTED else f"{prog}: error: {message}", file=sys.stderr)
        return code
