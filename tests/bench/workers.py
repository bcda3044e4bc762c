"""Worker subprocesses for the benchmark, and the peak memory of their process tree."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

__all__ = ["PLATFORMS", "SYSTEMS", "Worker", "worker_argv"]

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery"]
JOBS = [sys.executable, "-m", "jobs"]

# The systems compared: "celery-defaults" is bare Celery with its own defaults, "celery" bare
# Celery with the platform's settings, "celery-db" the latter with its database result backend;
# "platform" is ``jobs worker`` (prefork), "batched" ``jobs worker -P batched`` and "pooled"
# ``jobs worker --batches`` (their drain and latency).
SYSTEMS = ("celery-defaults", "celery", "platform", "celery-db", "batched", "pooled")
PLATFORMS = ("platform", "batched", "pooled")


def worker_argv(system: str, concurrency: int, loglevel: str, pool: str = "prefork") -> list[str]:
    """The same pool, concurrency and queue for every system; the same log level but for Celery's
    defaults (WARNING, no ``-l``); only the app differs."""
    common = ["-P", pool, "-c", str(concurrency), "-Q", "default", "-n", f"bench-{system}@%h"]
    if system == "platform":
        return [*JOBS, "worker", *common, "-l", loglevel]
    if system == "batched":  # -c single-process workers under a supervisor, whatever ``pool``
        return [*JOBS, "worker", *common, "-l", loglevel, "-P", "batched"]
    if system == "pooled":  # batches in the prefork pool
        return [*JOBS, "worker", *common, "-l", loglevel, "-P", "prefork", "--batches"]
    if system == "celery-defaults":
        return [*CELERY, "-A", "tests.bench.bare:defaults_app", "worker", *common]
    return [*CELERY, "-A", "tests.bench.bare", "worker", *common, "-l", loglevel]


class Worker:
    """A worker started in its own process group, sampled for memory until stopped."""

    def __init__(
        self,
        system: str,
        *,
        concurrency: int,
        log_path: Path,
        env: dict[str, str],
        loglevel: str = "INFO",
        sample_every: float = 0.1,
        pool: str = "prefork",
    ) -> None:
        self.argv = worker_argv(system, concurrency, loglevel, pool)
        self.log_path = log_path
        self.env = env
        self.sample_every = sample_every
        self.peak_rss = 0
        self.peak_pss = 0
        self.processes = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._sampler.start()
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the worker's main process and its pool."""
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += times.user + times.system
        return total

    def client_ports(self, server_port: int) -> list[int]:
        """Local ports of the worker's TCP connections to ``server_port`` (its PostgreSQL sessions)."""
        ports = []
        for proc in self._tree():
            try:
                connections = proc.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            ports += [c.laddr.port for c in connections if c.raddr and c.raddr.port == server_port]
        return ports

    def _sample(self) -> None:
        pss_due = 0.0
        while not self._stop.is_set():
            try:
                tree = self._tree()
                rss = sum(p.memory_info().rss for p in tree)
                self.processes = max(self.processes, len(tree))
                self.peak_rss = max(self.peak_rss, rss)
                if time.monotonic() >= pss_due:
                    # PSS splits pages shared by the forked pool between processes (smaps_rollup).
                    self.peak_pss = max(self.peak_pss, sum(p.memory_full_info().pss for p in tree))
                    pss_due = time.monotonic() + 1.0
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            self._stop.wait(self.sample_every)

    def stop(self, grace: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then cold (SIGQUIT), then SIGKILL, to this worker's group only."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Pool children left behind by a killed main process are in the same group.
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._sampler.is_alive():
            self._sampler.join(timeout=2)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
