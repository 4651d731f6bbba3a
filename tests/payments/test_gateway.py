"""payments.gateway with the real SDK against the fake: typed errors, timeouts, one client per thread, rate limit."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from payments import gateway, ratelimit
from payments.gateway import (
    GatewayAuthError,
    GatewayNotConfigured,
    GatewayRateLimited,
    GatewayRejected,
    GatewayUnavailable,
)
from ops.demo.fake_gateway import FakeRazorpay
from tests.payments.conftest import KEY_SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def payment(fake_gateway):
    order = fake_gateway.add_order(amount=49900)
    return fake_gateway.add_payment(order_id=order["id"])


def test_fetches_and_capture(fake_gateway, payment):
    assert gateway.fetch_payment(payment["id"])["status"] == "authorized"
    assert gateway.fetch_order(payment["order_id"])["status"] == "attempted"
    assert [p["id"] for p in gateway.fetch_order_payments(payment["order_id"])] == [payment["id"]]
    captured = gateway.capture(payment["id"], 49900, "INR")
    assert captured["status"] == "captured"
    refund = gateway.refund(payment["id"], 900)
    assert (refund["entity"], refund["amount"]) == ("refund", 900)


def test_capture_twice_is_rejected_as_already_captured(fake_gateway, payment):
    gateway.capture(payment["id"], 49900, "INR")
    with pytest.raises(GatewayRejected) as caught:
        gateway.capture(payment["id"], 49900, "INR")
    assert caught.value.already_captured and caught.value.status == 400
    assert caught.value.code == "BAD_REQUEST_ERROR" and not caught.value.retryable
    assert fake_gateway.captures(payment["id"]) == 1


@pytest.mark.parametrize("fault, error, status", [
    ({"p_5xx": 1.0}, GatewayUnavailable, 503),
    ({"p_html": 1.0}, GatewayUnavailable, 502),
    ({"p_html": 1.0, "html_status": 200}, GatewayUnavailable, 200),
    ({"p_429": 1.0}, GatewayRateLimited, 429),
    ({"p_timeout": 1.0}, GatewayUnavailable, None),
])
def test_each_fault_maps_to_its_typed_error(fake_gateway, payment, settings, fault, error, status):
    settings.RAZORPAY_TIMEOUT = 0.3
    fake_gateway.set_faults(**fault)
    with pytest.raises(error) as caught:
        gateway.fetch_payment(payment["id"])
    assert type(caught.value) is error
    assert caught.value.status == status and caught.value.retryable
    assert caught.value.resource_id == payment["id"]


def test_rate_limited_answer_carries_retry_after(fake_gateway, payment):
    fake_gateway.set_faults(p_429=1.0)
    with pytest.raises(GatewayRateLimited) as caught:
        gateway.fetch_payment(payment["id"])
    assert caught.value.retry_after == 1.0


def test_gateway_error_code_from_the_bank_is_unavailable(fake_gateway, payment):
    fake_gateway.set_capture_outcome(payment["id"], "gateway_error")
    with pytest.raises(GatewayUnavailable) as caught:
        gateway.capture(payment["id"], 49900, "INR")
    assert caught.value.code == "GATEWAY_ERROR"


def test_timeout_is_honoured(fake_gateway, payment, settings):
    # given: the gateway holds the connection for 30 s
    settings.RAZORPAY_TIMEOUT = 0.3
    fake_gateway.set_faults(p_timeout=1.0)
    started = time.monotonic()
    # when
    with pytest.raises(GatewayUnavailable, match="no answer within 0.3s"):
        gateway.capture(payment["id"], 49900, "INR")
    # then
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_unavailable(settings):
    with FakeRazorpay("k", "s") as fake:
        url = fake.base_url
    settings.RAZORPAY_BASE_URL, settings.RAZORPAY_KEY_ID, settings.RAZORPAY_KEY_SECRET = url, "k", "s"
    settings.RAZORPAY_RATE_LIMIT = 0
    with pytest.raises(GatewayUnavailable, match="connection failed"):
        gateway.fetch_order("order_anything0001")


def test_bad_credentials_are_an_auth_error_without_the_secret(fake_gateway, payment, settings):
    settings.RAZORPAY_KEY_SECRET = "not-the-secret"
    with pytest.raises(GatewayAuthError) as caught:
        gateway.fetch_payment(payment["id"])
    assert caught.value.status == 401
    assert "not-the-secret" not in str(caught.value) and KEY_SECRET not in str(caught.value)


def test_not_configured(settings):
    settings.RAZORPAY_KEY_ID = ""
    with pytest.raises(GatewayNotConfigured):
        gateway.fetch_payment("pay_anything00001")


def test_unknown_id_is_rejected_as_not_found(fake_gateway):
    with pytest.raises(GatewayRejected) as caught:
        gateway.fetch_order("order_missing000001")
    assert caught.value.not_found


@pytest.mark.parametrize("call", [
    lambda: gateway.capture("pay_x", 499.0, "INR"),
    lambda: gateway.capture("pay_x", 0, "INR"),
    lambda: gateway.capture("pay_x", 49900, "inr"),
    lambda: gateway.capture("order_x", 49900, "INR"),
    lambda: gateway.fetch_payment("pay_x/../../orders"),
    lambda: gateway.refund("pay_x", -5),
])
def test_bad_input_is_refused_before_any_call(fake_gateway, call):
    with pytest.raises(ValueError):
        call()
    assert fake_gateway.calls() == []


def test_one_client_per_thread(fake_gateway, payment):
    sessions, errors = [], []

    def work():
        try:
            for _ in range(5):
                gateway.fetch_payment(payment["id"])
            sessions.append(gateway._local.client.client.session)
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({id(s) for s in sessions}) == 6
    assert len(fake_gateway.calls("payment_fetch")) == 30


@pytest.mark.redis
def test_no_slot_within_the_bound_is_rate_limited_without_a_call(fake_gateway, payment, settings, redis_client):
    # given: one call a second, and no waiting allowed
    settings.RAZORPAY_RATE_LIMIT = 1
    settings.RAZORPAY_RATE_MAX_WAIT = 0.05
    gateway.fetch_payment(payment["id"])
    # when
    with pytest.raises(GatewayRateLimited) as caught:
        gateway.fetch_payment(payment["id"])
    # then
    assert 0.5 < caught.value.retry_after <= 1.0
    assert len(fake_gateway.calls()) == 1


_HAMMER = """
import sys, time
import django
django.setup()
from payments import ratelimit
print("ready", flush=True)
start, end, rate = map(float, sys.stdin.readline().split())
while time.time() < start:
    time.sleep(0.001)
n = 0
while True:
    ratelimit.acquire("test-shared", rate=rate, max_wait=1.0)
    if time.time() >= end:
        break
    n += 1
print(n, flush=True)
"""


@pytest.mark.redis
@pytest.mark.slow
def test_rate_is_held_across_two_processes(redis_client, settings):
    # given: two processes ready to call as fast as they can for 2 s under 40 calls/s
    rate, seconds = 40.0, 2.0
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="checkout.settings", REDIS_URL=settings.REDIS_URL,
               PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", _HAMMER], cwd=ROOT, env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    # when
    start = time.time() + 0.2
    for proc in procs:
        proc.stdin.write(f"{start} {start + seconds} {rate}\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=30) for proc in procs]
    # then: together they got the rate (plus the burst), not twice it
    assert all(proc.returncode == 0 for proc in procs), outputs
    counts = [int(out.strip()) for out, _ in outputs]
    assert rate * seconds * 0.85 <= sum(counts) <= rate * seconds + ratelimit.burst_for(rate) + 1
    assert min(counts) > 0


def test_without_redis_the_limit_holds_per_process(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    rate = 50.0
    started = time.monotonic()
    for _ in range(20):
        ratelimit.acquire("test-local", rate=rate, max_wait=1.0)
    elapsed = time.monotonic() - started
    assert elapsed >= (20 - ratelimit.burst_for(rate)) / rate * 0.9
