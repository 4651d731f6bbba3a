"""/health/ and /metrics against a database that accepts connections and never answers, or that hangs
under a connection already open: every probe is answered within HEALTH_CHECK_TIMEOUT, and the
probes of a process share one ping."""
import math
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connections

from ops.maintenance import health
from tests.conftest import ROOT
from tests.served import gunicorn, own_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TIMEOUT = 1.0
PING_SECONDS = 1.0
PROBES = 8


def p99(values):
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


class HungServer:
    """Accepts TCP connections and never sends a byte: a database host that hangs. Counts what it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", own_port()), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class FreezableProxy:
    """A TCP proxy to PostgreSQL; freeze() stops carrying bytes either way while every connection stays open."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.sock = socket.create_server(("127.0.0.1", own_port()), backlog=16)
        self.port = self.sock.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.connections += 1
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source, target):
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def freeze(self):
        self.flowing.clear()

    def thaw(self):
        self.flowing.set()

    def close(self):
        self.flowing.set()
        self.sock.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def hung_server():
    server = HungServer()
    yield server
    server.close()


@pytest.fixture
def hung_site(hung_server, tmp_path):
    """gunicorn (one process, eight threads) whose DATABASE_URL points at the hung server; its base URL."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "checkout.settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{hung_server.port}/checkout",
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "true",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "HEALTH_CHECK_TIMEOUT": str(TIMEOUT),
        "HEALTH_PING_SECONDS": str(PING_SECONDS),
    }
    with gunicorn(env, tmp_path / "gunicorn.log", "-w", "1", "-k", "gthread", "--threads", str(PROBES)) as base:
        yield base


def timed_get(url):
    started = time.monotonic()
    response = requests.get(url, timeout=30)
    return time.monotonic() - started, response


def test_health_answers_within_the_timeout_when_the_database_accepts_and_never_answers(hung_site, hung_server):
    # given a served site whose database accepts connections and never answers
    bound = TIMEOUT + 0.5
    latencies, rounds = [], 3
    with ThreadPoolExecutor(PROBES) as pool:
        for round_no in range(rounds):
            # when eight monitors probe at once, in a ping period of their own
            answers = list(pool.map(timed_get, [f"{hung_site}/health/"] * PROBES))
            took = [seconds for seconds, _ in answers]
            latencies += took
            print(f"\nround {round_no + 1}: /health/ latencies (s) {sorted(round(s, 3) for s in took)}")
            for _, response in answers:
                assert response.status_code == 503
                body = response.json()
                assert body["services"]["database"]["status"] == "down"
                assert body["services"]["database"]["error"] == "TimeoutError"
                assert body["problems"] == ["database"]
            time.sleep(PING_SECONDS + 0.3)

        # and /metrics with /health/, together in a fresh period
        mixed = list(pool.map(timed_get, [f"{hung_site}/metrics", f"{hung_site}/health/"] * (PROBES // 2)))
    metrics_took = [seconds for seconds, response in mixed if response.url.endswith("/metrics")]
    print(f"/metrics with /health/ latencies (s) {sorted(round(s, 3) for s, _ in mixed)}")
    print(f"/health/ p99 {p99(latencies):.3f} s over {len(latencies)} probes (bound {bound} s); "
          f"connections the database got: {len(hung_server.accepted)} for {rounds + 1} ping periods")

    # then every probe is answered within the timeout, and each period cost the database one connection
    assert p99(latencies) <= bound
    assert max(seconds for seconds, _ in mixed) <= bound
    assert len(hung_server.accepted) == rounds + 1
    text = next(response.text for _, response in mixed if response.url.endswith("/metrics"))
    assert mixed[0][1].status_code == 200 and metrics_took
    for line in ('checkout_dependency_up{dependency="database"} 0.0', 'checkout_dependency_up{dependency="redis"} 1.0',
                 'checkout_scrape_skipped{source="jobs"} 1.0', 'checkout_scrape_skipped{source="tasks"} 0.0',
                 'checkout_scrape_errors{source="jobs"} 1.0'):
        assert line in text


def test_a_database_that_hangs_under_an_open_connection_is_down_within_the_timeout(settings):
    # given the pings going through a proxy to the real PostgreSQL
    settings.HEALTH_CHECK_TIMEOUT = TIMEOUT
    db = connections["default"].settings_dict
    proxy = FreezableProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    saved = db["HOST"], db["PORT"]
    db["HOST"], db["PORT"] = "127.0.0.1", str(proxy.port)

    def ping():
        started = time.monotonic()
        answer = health.dependency_pings()["database"]
        return answer, time.monotonic() - started

    try:
        # when the database answers, the ping's connection is kept and used again
        first, _ = ping()
        second, _ = ping()
        assert (first["status"], second["status"], proxy.connections) == ("ok", "ok", 1)
        # when it stops answering on that open connection
        proxy.freeze()
        hung, took = ping()
        print(f"\nping on a hung open connection: {hung} after {took:.3f} s")
        # then it is down within the timeout
        assert (hung["status"], hung["error"]) == ("down", "TimeoutError")
        assert took <= TIMEOUT + 0.5
        # and once it answers again, the next ping finds it up
        proxy.thaw()
        time.sleep(0.1)  # the timed-out ping's thread finishes just after its deadline
        back, took = ping()
        print(f"ping after the database came back: {back} after {took:.3f} s ({proxy.connections} connections)")
        assert back["status"] == "ok"
    finally:
        db["HOST"], db["PORT"] = saved
        health.clear_cache()
        proxy.close()
