"""Private servers for fault tests: a ``redis-server`` and a PostgreSQL cluster on free ports.

A fault test stops, kills, pauses and empties these, never the shared
servers. Each runs in a temporary directory, is controlled through the pid of
the process this module started, and is stopped (SIGKILL if need be) when its
``with`` block ends or the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

__all__ = ["PostgresServer", "RedisServer", "free_port", "postgres_bin"]

_STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    """Whatever a crashed test left running is killed by pid when the interpreter exits."""
    for process in _STARTED:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
                process.wait(timeout=10)


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary (``initdb``, ``postgres``), newest installed version first."""
    found = shutil.which(name)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    if found:
        return found
    raise FileNotFoundError(f"{name} is not installed (looked in /usr/lib/postgresql/*/bin and PATH)")


def _wait(
    ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-2000:]}"
            )
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready in {timeout}s:\n{log.read_text(errors='replace')[-2000:]}")


def _unprivileged_user() -> str | None:
    """The user PostgreSQL runs as when we are root (it refuses root): ``postgres``, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


class _Server:
    """One server process we started: start, stop, kill, pause, resume, all by pid."""

    name = "server"

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix=f"jobs-{self.name}-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / f"{self.name}.log"

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def _popen_user(self) -> str | None:
        return None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._popen_user(),
            )
        _STARTED.append(self.process)
        _wait(self.ready, self.name, self.process, self.log_path, timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the server by pid (SIGKILL if it does not stop in ``timeout``)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self.send(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.send(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies without a chance to save anything."""
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        self.send(signal.SIGCONT)

    def close(self) -> None:
        self.stop(timeout=15)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisServer(_Server):
    """A ``redis-server`` without persistence: a restart starts it empty."""

    name = "redis"

    def _argv(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.root),
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip

    def url(self, db: int = 1) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 1) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5, socket_connect_timeout=2)

    def ready(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def restart_empty(self) -> None:
        """SIGKILL and start again on the same port: every key is gone (no persistence)."""
        self.kill()
        self.start()


class PostgresServer(_Server):
    """A PostgreSQL cluster made by ``initdb`` in a temporary directory, run by its ``postgres`` pid.

    ``stop()`` is a fast shutdown (SIGINT: sessions are disconnected, like
    ``pg_ctl stop -m fast``); ``kill()`` is a crash (SIGKILL, recovery on the
    next start).
    """

    name = "postgres"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(root)
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.user = _unprivileged_user()

    def _argv(self) -> list[str]:
        return [
            postgres_bin("postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.sockets}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
            "-c", "shared_buffers=32MB",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.sockets.mkdir(parents=True, exist_ok=True)
            if self.user is not None:  # PostgreSQL refuses to run as root
                shutil.chown(self.root, self.user)
                shutil.chown(self.sockets, self.user)
            subprocess.run(
                [
                    postgres_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
                check=True,
                capture_output=True,
                user=self.user,
            )
        super().start(timeout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
        super().stop(sig, timeout)

    def _popen_user(self) -> str | None:
        return self.user

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        import psycopg

        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False
