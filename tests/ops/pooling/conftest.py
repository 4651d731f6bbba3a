"""PgBouncer in transaction pooling mode in front of the test database.

Each test that asks gets its own `pgbouncer` process on a spare port (16800-16899)
with a small pool handed out round robin, so that consecutive transactions of one
client really run on different server connections: whatever relies on session state
breaks here as it would in production. Child processes (workers, beats, runjob)
reach the database through it with DATABASE_POOLING=transaction; `through_pgbouncer`
sends this process's own connections through it too.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest
from django.db import connections

from tests.services import in_ci

PORTS = range(16800, 16900)
# Short enough that a killed holder's lease expires within a test, long enough for a renewal
# (every third of it) to be late under a loaded machine.
TEST_JOB_LOCK_LEASE = "4s"


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )
    if found is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_as() -> list[str]:
    """PgBouncer refuses to run as root: drop to the database's system user (it reads its files first)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["-u", user]
    pytest.fail("running as root, with neither a postgres nor a nobody user for pgbouncer to switch to")


class PgBouncer:
    """One pgbouncer process: transaction pooling, `pool_size` server connections per database."""

    def __init__(self, tmp_path: Path, database: dict, pool_size: int) -> None:
        self.database = database
        self.pool_size = pool_size
        self.dir = tmp_path / f"pgbouncer-{os.getpid()}-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.log_path = self.dir / "pgbouncer.log"
        self.user = database.get("USER") or "postgres"
        password = database.get("PASSWORD") or ""
        (self.dir / "users.txt").write_text(f'"{self.user}" "{password}"\n')
        self.proc = None
        offset = os.getpid() % len(PORTS)
        attempts = 0
        for port in (*PORTS[offset:], *PORTS[:offset]):
            if not _port_is_free(port):
                continue
            if self._start(port):
                self.port = port
                return
            attempts += 1  # another process took the port between the probe and the start
            if attempts == 3:
                break
        raise RuntimeError(f"pgbouncer did not start on a port of {PORTS.start}-{PORTS.stop - 1}:\n{self.log()}")

    def _start(self, port: int) -> bool:
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.database.get('HOST') or '127.0.0.1'} port={self.database.get('PORT') or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\n"
            "reserve_pool_size = 0\nmax_client_conn = 500\n"
            # Hand idle server connections out in turn rather than the last one used, so that
            # even a lone client's transactions move between sessions.
            "server_round_robin = 1\n"
        )
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [_pgbouncer_binary(), *_run_as(), str(ini)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # the port was taken meanwhile, most likely: the caller tries the next
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def url(self, dbname: str | None = None) -> str:
        password = f":{self.database['PASSWORD']}" if self.database.get("PASSWORD") else ""
        return f"postgres://{self.user}{password}@127.0.0.1:{self.port}/{dbname or self.database['NAME']}"

    def connect(self):
        """A plain autocommit connection through the pooler: every statement its own transaction."""
        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        return conn

    def fill_pool(self) -> set[int]:
        """Open every server connection of the pool at once; the server sessions' process ids."""
        clients = [self.connect() for _ in range(self.pool_size)]
        try:
            pids = set()
            for client in clients:
                client.autocommit = False  # each keeps its server connection until it commits
                with client.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    pids.add(cursor.fetchone()[0])
            for client in clients:
                client.commit()
            return pids
        finally:
            for client in clients:
                client.close()

    def env(self, base: dict, *, pooling: str = "transaction") -> dict:
        """A child process's environment: the database through this pooler, job locks as `pooling` says."""
        return {**base, "DATABASE_URL": self.url(), "DATABASE_POOLING": pooling,
                "JOB_LOCK_LEASE": TEST_JOB_LOCK_LEASE}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def pgbouncer_factory(django_db_setup, tmp_path):
    """Start PgBouncers in front of the test database: `start(pool_size=2)`; each is stopped after the test."""
    started = []

    def start(pool_size: int = 2) -> PgBouncer:
        bouncer = PgBouncer(tmp_path, dict(connections["default"].settings_dict), pool_size)
        started.append(bouncer)
        sessions = bouncer.fill_pool()
        assert len(sessions) == pool_size, f"pgbouncer opened {len(sessions)} of {pool_size} server connections"
        return bouncer

    yield start
    for bouncer in started:
        bouncer.stop()


@pytest.fixture
def pgbouncer(pgbouncer_factory):
    """A transaction-pooling PgBouncer with two server connections, both open."""
    return pgbouncer_factory(pool_size=2)


@pytest.fixture
def process_env(process_env, pgbouncer):
    """Child processes reach the test database through PgBouncer, with DATABASE_POOLING=transaction."""
    return pgbouncer.env(process_env)


@pytest.fixture
def through_pgbouncer(pgbouncer, transactional_db, settings):
    """This process's connections (every thread's) go through PgBouncer too, set up as a deployment would be.

    The test's data must be committed for the pooler's other sessions to see it, hence a
    transactional database. The connection settings are one dict shared by every thread's
    connection: pointed at the pooler for the test, and back after.
    """
    database = connections["default"].settings_dict
    saved = {key: database.get(key) for key in ("HOST", "PORT", "DISABLE_SERVER_SIDE_CURSORS")}
    connections.close_all()
    database.update(HOST="127.0.0.1", PORT=str(pgbouncer.port), DISABLE_SERVER_SIDE_CURSORS=True)
    settings.DATABASE_POOLING = "transaction"
    try:
        yield pgbouncer
    finally:
        connections.close_all()
        database.update(saved)
