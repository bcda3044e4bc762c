"""One database and one Redis db per test process, so that parallel test processes share nothing.

``make test`` runs the suite under pytest-xdist: worker ``gwN`` (N = 0, 1, ...)
of ``count`` workers gets, derived from the configured ``JOBS_DATABASE_URL``
and ``JOBS_BROKER_URL``:

- the database ``<name>_test`` -> ``<name>_gwN_test`` (``jobs_test`` -> ``jobs_gw0_test``);
  the configured name must end in ``_test``, so every derived one does too;
- the Redis db ``B`` -> ``B - N``: a run of ``count`` workers uses dbs ``B - count + 1 .. B``,
  which must all lie in 1..15 (Redis has 16, and tests never use db 0); a run that
  would leave that range is refused before any test starts. Counting down keeps the
  default run (db 11: dbs 9..11 with three processes, up to 6..11 with six) clear of
  the benchmark's db 12 and the development db 5.

A serial run (``-n 0``, or no xdist) uses the configured ones unchanged. The
derived URLs are written into the environment before anything reads settings,
so the ``jobs`` commands, workers and leaders a test starts inherit them.
Databases a test makes for itself (an empty one to migrate, ...) are named
after the process's own: ``scratch_database_url``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

__all__ = [
    "IsolationError",
    "broker_db",
    "isolate",
    "scratch_database_url",
    "worker_broker_url",
    "worker_broker_urls",
    "worker_database_url",
]

SUFFIX = "_test"
REDIS_DBS = range(1, 16)  # db 0 is everyone's default: never a test's
#: Set once a process's URLs are derived, so that a process started by a test does not derive them again.
MARK = "JOBS_TEST_ISOLATED_FOR"


class IsolationError(ValueError):
    """The configured database or Redis db cannot be split between the test processes."""


def _stem(database_url: str) -> tuple[sa.URL, str]:
    url = sa.make_url(database_url)
    name = url.database or ""
    if not name.endswith(SUFFIX) or name == SUFFIX:
        raise IsolationError(f"tests refuse to run against database {name!r} (must end in {SUFFIX})")
    return url, name.removesuffix(SUFFIX)


def worker_database_url(database_url: str, worker: str) -> str:
    """The database of test process ``worker`` (``gw0``, ...): ``<name>_test`` -> ``<name>_<worker>_test``."""
    url, stem = _stem(database_url)
    return url.set(database=f"{stem}_{worker}{SUFFIX}").render_as_string(hide_password=False)


def scratch_database_url(database_url: str, purpose: str) -> str:
    """A database a test makes for itself, named after the process's own: ``<name>_<purpose>_test``."""
    url, stem = _stem(database_url)
    return url.set(database=f"{stem}_{purpose}{SUFFIX}").render_as_string(hide_password=False)


def broker_db(broker_url: str) -> int:
    """The Redis db number of a broker URL (``redis://host:6379/11`` -> 11; none given is db 0)."""
    path = urlsplit(broker_url).path.strip("/")
    if not path:
        return 0
    if not path.isdigit():
        raise IsolationError(f"JOBS_BROKER_URL={broker_url}: the path must be a Redis db number")
    return int(path)


def worker_broker_urls(broker_url: str, count: int) -> list[str]:
    """The broker URLs of ``count`` test processes, in worker order; refused if any db leaves 1..15."""
    first = broker_db(broker_url)
    dbs = range(first, first - count, -1)
    if first not in REDIS_DBS or dbs[-1] not in REDIS_DBS:
        raise IsolationError(
            f"{count} test processes need Redis dbs {dbs[-1]}..{first} (one each, down from JOBS_BROKER_URL's"
            f" db {first}); they must lie in {REDIS_DBS.start}..{REDIS_DBS.stop - 1}:"
            " run fewer processes (JOBS_TEST_WORKERS) or start from a higher db"
        )
    parts = urlsplit(broker_url)
    return [urlunsplit(parts._replace(path=f"/{db}")) for db in dbs]


def worker_broker_url(broker_url: str, worker: str, count: int) -> str:
    """The broker URL of test process ``worker`` (``gwN``) of ``count``: Redis db ``B - N``."""
    return worker_broker_urls(broker_url, count)[_index(worker)]


def _index(worker: str) -> int:
    if not (worker.startswith("gw") and worker[2:].isdigit()):
        raise IsolationError(f"unexpected pytest-xdist worker id {worker!r} (expected gw0, gw1, ...)")
    return int(worker[2:])


def isolate(environ: MutableMapping[str, str]) -> None:
    """Point this test process at its own database and Redis db, if it is a pytest-xdist worker.

    Reads and rewrites ``JOBS_DATABASE_URL`` and ``JOBS_BROKER_URL`` in ``environ``;
    does nothing in a serial run, in the xdist controller, or a second time.
    """
    worker = environ.get("PYTEST_XDIST_WORKER")
    if not worker or environ.get(MARK) == worker:
        return
    count = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    environ["JOBS_DATABASE_URL"] = worker_database_url(environ["JOBS_DATABASE_URL"], worker)
    environ["JOBS_BROKER_URL"] = worker_broker_url(environ["JOBS_BROKER_URL"], worker, count)
    environ[MARK] = worker
