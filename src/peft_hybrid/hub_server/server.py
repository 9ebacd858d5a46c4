"""A local Hugging Face Hub-compatible server, for tests that push and pull with the real client.

Run it::

    python -m peft_hybrid.hub_server.server --port 8808 --data-dir ./hub-data --user alice:TOKEN

then point the client at it *before* huggingface_hub is imported::

    HF_ENDPOINT=http://127.0.0.1:8808 HF_HUB_DISABLE_XET=1 HF_TOKEN=TOKEN python push.py

Xet must be disabled: this server speaks the classic LFS protocol only. From Python, use
:class:`HubServer` to run it in a child process on a free port. Needs the ``hub-server`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["HubServer", "create_app", "main", "READY_MESSAGE"]

READY_MESSAGE = "Hub server ready at"
# HubServer hands tokens to its child through the environment, not argv, which `ps` shows to all.
USERS_ENV = "PEFT_HYBRID_HUB_SERVER_USERS"
# Set to "1" (``HubServer(stall_uploads=True)``): LFS uploads stop after their first bytes, until a kill.
STALL_UPLOADS_ENV = "PEFT_HYBRID_HUB_SERVER_STALL_UPLOADS"
SLOW_MACHINE_TIMEOUT_S = 600


def create_app(data_dir: str | os.PathLike[str], users: Mapping[str, str]) -> FastAPI:
    """A FastAPI app serving the Hub repos stored under ``data_dir`` to ``users`` (name -> token)."""
    # Imported lazily: HubServer and the test fixtures must import without the hub-server extra.
    from peft_hybrid.hub_server.app import create_app as _create_app

    return _create_app(data_dir, users)


class HubServer:
    """The Hub server in a child process on a free port; also a context manager.

    ``users`` maps user names to tokens. State lives in ``data_dir``, so a new ``HubServer`` on the
    same folder serves the same repos. The child's stdout and stderr go to ``log_path`` (default
    ``data_dir / "server.log"``, appended to across restarts).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        users: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 300.0,
        stall_uploads: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.users = dict(users)
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path is not None else self.data_dir / "server.log"
        self.startup_timeout = startup_timeout
        self.stall_uploads = stall_uploads
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def token(self, user: str) -> str:
        return self.users[user]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> HubServer:
        """Start the child and wait until it accepts connections."""
        if self.running:
            raise RuntimeError(f"Hub server already running at {self.url}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env[USERS_ENV] = json.dumps(self.users)
        env.pop(STALL_UPLOADS_ENV, None)
        if self.stall_uploads:
            env[STALL_UPLOADS_ENV] = "1"
        cmd = [
            sys.executable,
            "-m",
            "peft_hybrid.hub_server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            output = self._log_since(offset)
            match = re.search(re.escape(READY_MESSAGE) + r" (\S+)", output)
            if match:
                self.url = match.group(1)
                return self
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Hub server exited with code {self._proc.returncode} before it was ready:\n{output}"
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"Hub server not ready after {self.startup_timeout:.0f} s:\n{self._log_since(offset)}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down gracefully (SIGTERM), killing the child if it does not exit in ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the child, e.g. to simulate a crash in the middle of a push."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def stats(self) -> dict[str, int]:
        """Server-side counters: commits, regular_files_committed, lfs_uploads, lfs_bytes_uploaded.

        Counted since this process started (they are not persisted).
        """
        if self.url is None:
            raise RuntimeError("Hub server is not running")
        # No proxy: a proxy configured for the real internet must not see 127.0.0.1 traffic.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}/_testing/stats", timeout=10) as response:
            return json.load(response)

    def subprocess_env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """Environment for a child process whose huggingface_hub should use this server.

        ``token`` becomes HF_TOKEN (any inherited HF_TOKEN is dropped otherwise).
        """
        if self.url is None:
            raise RuntimeError("Hub server is not running")
        env = dict(os.environ)
        env.pop("HF_TOKEN", None)
        no_proxy = ",".join(p for p in (env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost") if p)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HUB_DISABLE_XET="1",
            # The client's 10 s metadata and download timeouts trip on a busy machine (a file then
            # falls back to the cache or fails); against this local server, waiting is always right.
            HF_HUB_ETAG_TIMEOUT=str(SLOW_MACHINE_TIMEOUT_S),
            HF_HUB_DOWNLOAD_TIMEOUT=str(SLOW_MACHINE_TIMEOUT_S),
            HF_HUB_OFFLINE="0",
            TRANSFORMERS_OFFLINE="0",
            NO_PROXY=no_proxy,
            no_proxy=no_proxy,
        )
        if token is not None:
            env["HF_TOKEN"] = token
        env.update(extra)
        return env

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _parse_users(values: Sequence[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for value in values:
        name, sep, token = value.partition(":")
        if not sep or not name or not token:
            raise SystemExit(f"--user expects NAME:TOKEN (got a value without a name or token for {name or '?'!r})")
        users[name] = token
    return users


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: serve until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Local Hugging Face Hub-compatible server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed when ready)")
    parser.add_argument("--data-dir", required=True, help="where repos and blobs are stored")
    parser.add_argument("--user", action="append", default=[], metavar="NAME:TOKEN", help="repeatable")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    users = json.loads(os.environ.get(USERS_ENV) or "{}")
    users.update(_parse_users(args.user))
    app = create_app(args.data_dir, users)

    # Bind first so that port 0 works and the printed URL is the real one.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"

    class _AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(f"{READY_MESSAGE} {url}", flush=True)

    config = uvicorn.Config(app, log_level=args.log_level, access_log=True)
    _AnnouncingServer(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
