"""The real app and scheduler served by uvicorn in a thread of the test process.

Unlike `serve_helpers.ServeProcess`, a test can reach into the running server: gate an adapter
fetch on an event, spy on the batch, read the scheduler's state.
"""

from __future__ import annotations

import argparse
import socket
import threading

from peft_hybrid.cli import serve as cli
from peft_hybrid.serve.app import create_app
from peft_hybrid.serve.server import build_state


def options(*args: str) -> argparse.Namespace:
    """``peft-hybrid serve ARGS``, parsed and checked as the command line does."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    parsed = parser.parse_args(list(args))
    cli.check(parsed)
    return parsed


class InProcessServer:
    """``with InProcessServer(*serve_args) as server:`` serves at ``server.url``; ``server.state`` is its state."""

    def __init__(self, *args: str) -> None:
        self.state = build_state(options(*args), None)
        self.url: str | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> InProcessServer:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.state), log_level="warning", timeout_graceful_shutdown=None)
        self._server = uvicorn.Server(config)
        started = threading.Event()

        class _Started(uvicorn.Server):
            async def startup(inner, sockets=None) -> None:  # noqa: N805 - the server is `self._server`
                await uvicorn.Server.startup(inner, sockets=sockets)
                started.set()

        self._server.__class__ = _Started
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        if not started.wait(60):
            raise RuntimeError("the in-process server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(60)
