"""``make soak``: a bounded random mix of faults against a steady load, then the checker's totals.

    python -m tests.faults.soak --minutes 5

Everything runs on private servers (``tests.support.servers``): a worker and a
leader with the fault suite's short timers, a thread submitting ``test.work``
jobs at a steady rate, and every ``--every`` seconds (± half) one fault drawn
at random: SIGKILL of the worker's main process, SIGKILL of one pool child,
Redis restarted empty, Redis paused (SIGSTOP) for a few seconds, PostgreSQL
restarted. When the time is up the load stops, the platform heals and
drains, and the checker reports accepted, succeeded, failed, cancelled, lost,
unfinished and duplicated effects. The exit status is 1 if any job was lost or
left unfinished or any effect duplicated (or the checker found another broken
promise).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil

from jobs.errors import JobsError
from tests.faults.checker import check, wait_for_quiet
from tests.faults.harness import Platform, private_platform

__all__ = ["main"]


class Load:
    """Submits ``rate`` jobs per second in a thread; what the ledger refused is remembered as refused."""

    def __init__(self, platform: Platform, rate: float) -> None:
        self.platform = platform
        self.rate = rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.refused = 0
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        random_ = random.Random()
        while not self.stop.is_set():
            key = f"soak-{uuid.uuid4()}"
            payload = {"key": key, "sleep": round(random_.uniform(0, 0.5), 2)}
            try:
                job = self.platform.producer.submit("test.work", payload)
            except JobsError:  # PostgreSQL is away: refused, and it must leave no row
                with self.lock:
                    self.refused += 1
                    self.platform.workload.refuse(key=key)
            else:
                with self.lock:
                    self.platform.workload.accept(job)
            self.stop.wait(1 / self.rate)


def _kill_worker(platform: Platform, rng: random.Random) -> str:
    platform.kill("worker", signal.SIGKILL)
    platform.forget("worker")
    platform.start_worker("worker")
    return "worker SIGKILL"


def _kill_child(platform: Platform, rng: random.Random) -> str:
    children = platform.pool_children()
    if not children:
        return "child SIGKILL (no child)"
    psutil.Process(rng.choice(children)).kill()
    return "child SIGKILL"


def _redis_restart_empty(platform: Platform, rng: random.Random) -> str:
    platform.redis.restart_empty()
    return "Redis restart empty"


def _redis_pause(platform: Platform, rng: random.Random) -> str:
    seconds = rng.uniform(3, 8)
    platform.redis.pause()
    time.sleep(seconds)
    platform.redis.resume()
    return f"Redis SIGSTOP {seconds:.0f}s"


def _postgres_restart(platform: Platform, rng: random.Random) -> str:
    seconds = rng.uniform(2, 5)
    platform.postgres.stop()
    time.sleep(seconds)
    platform.postgres.start()
    return f"PostgreSQL down {seconds:.0f}s"


FAULTS: dict[str, Callable[[Platform, random.Random], str]] = {
    "worker": _kill_worker,
    "child": _kill_child,
    "redis-restart": _redis_restart_empty,
    "redis-pause": _redis_pause,
    "postgres": _postgres_restart,
}


def soak(platform: Platform, *, minutes: float, every: float, rate: float, seed: int) -> int:
    rng = random.Random(seed)
    platform.ensure()
    load = Load(platform, rate)
    load.thread.start()
    injected: Counter[str] = Counter()
    deadline = time.monotonic() + minutes * 60
    print(f"soak: {minutes:g} min, {rate:g} jobs/s, a fault every ~{every:g}s (seed {seed})", flush=True)
    while time.monotonic() < deadline:
        time.sleep(min(rng.uniform(every / 2, every * 1.5), max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        name = rng.choice(sorted(FAULTS))
        try:
            what = FAULTS[name](platform, rng)
        except Exception as error:  # a fault that could not be injected is reported, not fatal
            what = f"{name} failed: {error}"
        injected[name] += 1
        print(f"  {time.strftime('%H:%M:%S')} {what}", flush=True)
        platform.heal()
        platform.ensure()
    load.stop.set()
    load.thread.join(timeout=30)
    platform.heal()
    platform.ensure()
    waited = wait_for_quiet(platform.settings, platform.workload, timeout=180, tick=platform.supervise)
    report = check(platform.settings, platform.workload)
    print(f"faults injected: {dict(injected)}; refused while PostgreSQL was down: {load.refused}")
    print(f"drained in {waited:.1f}s after the load stopped")
    print(report.describe())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between faults, on average")
    parser.add_argument("--rate", type=float, default=4.0, help="jobs submitted per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    root = Path(tempfile.mkdtemp(prefix="jobs-soak-"))
    print(f"process logs in {root}", flush=True)
    with contextlib.contextmanager(private_platform)(root) as platform:
        return soak(platform, minutes=args.minutes, every=args.every, rate=args.rate, seed=seed)


if __name__ == "__main__":
    sys.exit(main())
