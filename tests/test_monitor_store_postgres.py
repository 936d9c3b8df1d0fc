"""The monitor store on PostgreSQL: tests/test_monitors.py's store tests, collected again
here where ``db_url`` is a fresh database (``postgresql+psycopg://``) on a throwaway server
of Debian's postgresql package. `make test` installs the package and sets
RSIR_REQUIRE_POSTGRES, so there a missing server or driver fails the tests, not skips them."""

from __future__ import annotations

import itertools
import os
import pwd
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from shutil import rmtree
from typing import NoReturn

import numpy as np
import pytest

from rsir.monitor.store import MonitorStore
from test_monitors import (  # noqa: F401 - collected again here, on this module's db_url
    test_score_version_scores_only_new_rows_once,
    test_store_persists_and_inserts_each_alert_once,
    test_store_round_trips_monitors_and_deletes_their_alerts,
    test_stores_opened_together_on_a_new_database_all_open,
    test_webhook_that_fails_twice_is_retried_with_backoff_then_delivered,
)

_databases = itertools.count()


def _missing(why: str) -> NoReturn:
    if os.environ.get("RSIR_REQUIRE_POSTGRES"):  # set by `make test`, which installs the server
        pytest.fail(why + "; RSIR_REQUIRE_POSTGRES is set")
    pytest.skip(why)


def _bindir() -> Path:
    """The newest PostgreSQL's binaries in Debian's layout (/usr/lib/postgresql/<major>/bin)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").is_file()]
    if not found:
        _missing("no PostgreSQL server: initdb/pg_ctl not found under /usr/lib/postgresql/*/bin "
                 "(apt-get install postgresql)")
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")  # only this module's tests use it: stopped when they are done
def postgres_server() -> Iterator[str]:
    """A server of our own, never Debian's ``main`` cluster: a temporary data folder, trust
    auth, 127.0.0.1 on a free port, fsync off. Yields ``user@host:port``."""
    try:
        import psycopg  # noqa: F401 - the driver of postgresql+psycopg:// URLs
    except ImportError:
        _missing("psycopg is not installed (pip install -e '.[postgres]')")
    bindir = _bindir()
    tmp = Path(tempfile.mkdtemp(prefix="rsir-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            rmtree(tmp)
            _missing("running as root and there is no `postgres` user to run the server as")
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", _free_port()

    def run(*args: str | Path) -> None:
        done = subprocess.run([*as_user, *map(str, args)], cwd=tmp, capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = (tmp / "server.log").read_text() if (tmp / "server.log").is_file() else ""
            pytest.fail(f"{Path(args[0]).name} exited {done.returncode}:\n{done.stdout}{done.stderr}{log}")

    try:
        run(bindir / "initdb", "--no-sync", "--auth=trust", "--username=postgres", "--encoding=UTF8",
            "--locale=C", "-D", data)
        # -F: no fsync; -k: the socket in our folder, not /var/run/postgresql (Debian's cluster's)
        run(bindir / "pg_ctl", "start", "--wait", "-D", data, "-l", tmp / "server.log",
            "-o", f"-F -c listen_addresses=127.0.0.1 -p {port} -k '{tmp}'")
        yield f"postgres@127.0.0.1:{port}"
        run(bindir / "pg_ctl", "stop", "-D", data, "-m", "immediate")
    finally:
        rmtree(tmp, ignore_errors=True)


@pytest.fixture
def db_url(postgres_server: str) -> str:
    """A fresh database for each test (no rows, ids from 1), as a user's store URL."""
    import psycopg

    name = f"rsir_monitors_{next(_databases)}"
    with psycopg.connect(f"postgresql://{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://{postgres_server}/{name}"


def test_store_outlives_its_connections_being_dropped(db_url: str, postgres_server: str) -> None:
    """What a database restart or failover does to a running endpoint's pooled connections:
    its next statement gets a new one instead of the dead one's error."""
    import psycopg

    store = MonitorStore(db_url)
    store.create(name="roads", target="pairs", definition={}, vector=np.ones(4), threshold=0.3, scope={},
                 archive_version="v1")
    assert [m.name for m in store.list()] == ["roads"]  # its connection is back in the pool
    with psycopg.connect(f"postgresql://{postgres_server}/postgres", autocommit=True) as admin:
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                                [db_url.rsplit("/", 1)[1]]).fetchone()[0]
    assert dropped == 1
    assert [m.name for m in store.list()] == ["roads"]
