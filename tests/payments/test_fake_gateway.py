"""The fake Razorpay speaks the /v1 API the SDK calls, in Razorpay's shapes, with scriptable state and faults."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import razorpay
import requests
from razorpay.errors import BadRequestError

from ops.demo.fake_gateway import FakeRazorpay
from tests.payments.conftest import KEY_ID, KEY_SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sdk(fake_gateway):
    return razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=fake_gateway.base_url)


def test_wrong_credentials_get_401_in_razorpay_error_shape(fake_gateway):
    # given
    order = fake_gateway.add_order(amount=49900)
    # when
    response = requests.get(f"{fake_gateway.base_url}/v1/orders/{order['id']}", auth=(KEY_ID, "wrong"), timeout=2)
    # then
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "BAD_REQUEST_ERROR"
    assert response.json()["error"]["description"] == "Authentication failed"


def test_payment_and_order_entities_have_razorpay_shapes(fake_gateway, sdk):
    order = fake_gateway.add_order(amount=49900, receipt="order-1")
    assert sdk.order.fetch(order["id"], timeout=2)["status"] == "created"

    payment = fake_gateway.add_payment(order_id=order["id"], status="authorized")

    fetched = sdk.payment.fetch(payment["id"], timeout=2)
    assert {k: fetched[k] for k in ("entity", "amount", "currency", "status", "order_id", "captured")} == {
        "entity": "payment", "amount": 49900, "currency": "INR", "status": "authorized",
        "order_id": order["id"], "captured": False,
    }
    assert isinstance(fetched["created_at"], int) and fetched["error_code"] is None
    assert sdk.order.fetch(order["id"], timeout=2)["status"] == "attempted"
    listed = sdk.order.payments(order["id"], timeout=2)
    assert listed["entity"] == "collection" and [p["id"] for p in listed["items"]] == [payment["id"]]


def test_capture_once_then_already_captured(fake_gateway, sdk):
    # given
    order = fake_gateway.add_order(amount=49900)
    payment = fake_gateway.add_payment(order_id=order["id"])
    # when
    captured = sdk.payment.capture(payment["id"], 49900, {"currency": "INR"}, timeout=2)
    # then
    assert captured["status"] == "captured" and captured["captured"] is True
    assert sdk.order.fetch(order["id"], timeout=2)["status"] == "paid"
    with pytest.raises(BadRequestError, match="This payment has already been captured"):
        sdk.payment.capture(payment["id"], 49900, {"currency": "INR"}, timeout=2)
    assert fake_gateway.captures(payment["id"]) == 1


@pytest.mark.parametrize("amount, currency, message", [
    (100, "INR", "Capture amount must be equal to the amount authorized"),
    (49900, "USD", "Currency should be same as payment currency"),
])
def test_capture_with_wrong_amount_or_currency_is_refused_and_changes_nothing(fake_gateway, sdk, amount, currency,
                                                                             message):
    payment = fake_gateway.add_payment(amount=49900)
    with pytest.raises(BadRequestError, match=message):
        sdk.payment.capture(payment["id"], amount, {"currency": currency}, timeout=2)
    assert fake_gateway.payment(payment["id"])["status"] == "authorized"
    assert fake_gateway.captures(payment["id"]) == 0


def test_scripted_transitions(fake_gateway, sdk):
    late = fake_gateway.add_payment(amount=10000, status="failed", then=["authorized"])
    failing = fake_gateway.add_payment(amount=10000, on_capture="fail")
    flaky = fake_gateway.add_payment(amount=10000, on_capture="gateway_error")
    left = fake_gateway.add_payment(amount=10000)

    # a failed payment that turns authorized late: the next fetch sees it
    assert fake_gateway.payment(late["id"])["status"] == "failed"
    assert sdk.payment.fetch(late["id"], timeout=2)["status"] == "authorized"
    # a capture that fails the payment
    with pytest.raises(BadRequestError):
        sdk.payment.capture(failing["id"], 10000, {"currency": "INR"}, timeout=2)
    assert fake_gateway.payment(failing["id"])["status"] == "failed"
    # a transient gateway error leaves it authorized; once the bank is back the capture goes through
    with pytest.raises(razorpay.errors.GatewayError):
        sdk.payment.capture(flaky["id"], 10000, {"currency": "INR"}, timeout=2)
    fake_gateway.set_capture_outcome(flaky["id"], "capture")
    assert sdk.payment.capture(flaky["id"], 10000, {"currency": "INR"}, timeout=2)["status"] == "captured"
    # an authorized payment left alone is auto-refunded
    fake_gateway.auto_refund(left["id"])
    refunded = sdk.payment.fetch(left["id"], timeout=2)
    assert (refunded["status"], refunded["amount_refunded"], refunded["refund_status"]) == ("refunded", 10000, "full")


def test_refunds_partial_then_full(fake_gateway, sdk):
    payment = fake_gateway.add_payment(amount=10000, status="captured")
    first = sdk.payment.refund(payment["id"], {"amount": 4000}, timeout=2)
    assert (first["entity"], first["amount"], first["status"]) == ("refund", 4000, "processed")
    assert sdk.payment.fetch(payment["id"], timeout=2)["status"] == "captured"
    sdk.payment.refund(payment["id"], {}, timeout=2)
    assert sdk.payment.fetch(payment["id"], timeout=2)["status"] == "refunded"
    with pytest.raises(BadRequestError, match="fully refunded"):
        sdk.payment.refund(payment["id"], {}, timeout=2)
    assert [r["amount"] for r in fake_gateway.refunds(payment["id"])] == [4000, 6000]


def test_unknown_id_is_razorpay_bad_request(fake_gateway, sdk):
    with pytest.raises(BadRequestError, match="The id provided does not exist"):
        sdk.payment.fetch("pay_doesnotexist00", timeout=2)


def test_faults_follow_the_seed():
    def sequence(seed):
        with FakeRazorpay(KEY_ID, KEY_SECRET, seed=seed) as fake:
            fake.set_faults(p_5xx=0.3, p_429=0.2, p_html=0.2)
            with requests.Session() as session:
                for _ in range(30):
                    session.get(f"{fake.base_url}/v1/payments/pay_x", auth=(KEY_ID, KEY_SECRET), timeout=2)
            return [call["fault"] for call in fake.calls()]

    first = sequence(7)
    assert first == sequence(7)
    assert {"5xx", "429", "html", None} <= set(first)


def test_fault_bodies(fake_gateway):
    url = f"{fake_gateway.base_url}/v1/payments/pay_x"
    fake_gateway.set_faults(p_5xx=1.0)
    response = requests.get(url, auth=(KEY_ID, KEY_SECRET), timeout=2)
    assert response.status_code == 503 and response.json()["error"]["code"] == "SERVER_ERROR"
    fake_gateway.set_faults(p_5xx=0.0, p_429=1.0)
    response = requests.get(url, auth=(KEY_ID, KEY_SECRET), timeout=2)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    fake_gateway.set_faults(p_429=0.0, p_html=1.0)
    response = requests.get(url, auth=(KEY_ID, KEY_SECRET), timeout=2)
    assert response.status_code == 502 and response.text.startswith("<html>")


def test_timeout_fault_holds_the_connection_until_stopped(fake_gateway):
    fake_gateway.set_faults(p_timeout=1.0)
    with pytest.raises(requests.Timeout):
        requests.get(f"{fake_gateway.base_url}/v1/payments/pay_x", auth=(KEY_ID, KEY_SECRET), timeout=0.3)
    started = time.monotonic()
    fake_gateway.stop()
    assert time.monotonic() - started < 2


def test_latency_is_added(fake_gateway, sdk):
    payment = fake_gateway.add_payment(amount=10000)
    fake_gateway.set_faults(latency_ms=150)
    started = time.monotonic()
    sdk.payment.fetch(payment["id"], timeout=2)
    assert time.monotonic() - started >= 0.15


def test_lost_answer_after_apply_captured_anyway(fake_gateway, sdk):
    # given: the gateway applies the capture but the answer never arrives
    payment = fake_gateway.add_payment(amount=10000)
    fake_gateway.set_faults(p_5xx=1.0, after_apply=True)
    # when
    with pytest.raises(razorpay.errors.ServerError):
        sdk.payment.capture(payment["id"], 10000, {"currency": "INR"}, timeout=2)
    # then
    assert fake_gateway.payment(payment["id"])["status"] == "captured"
    assert fake_gateway.captures(payment["id"]) == 1


def test_script_api_refuses_bad_input(fake_gateway):
    with pytest.raises(ValueError):
        fake_gateway.add_payment(amount=10000, status="paid")
    with pytest.raises(ValueError):
        fake_gateway.add_order(amount=99.5)
    with pytest.raises(ValueError):
        fake_gateway.set_faults(p_5xx=0.7, p_429=0.5)
    with pytest.raises(TypeError):
        fake_gateway.set_faults(p_teapot=0.1)


@pytest.mark.slow
def test_management_command_serves_until_terminated(tmp_path):
    # given
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="checkout.settings", PYTHONPATH=str(ROOT),
               RAZORPAY_KEY_ID="rzp_test_cmd", RAZORPAY_KEY_SECRET="cmd-secret")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "fake_razorpay", "--port", "0", "--seed", "3"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline()
        base_url = re.search(r"at (http://\S+)", first)[1]
        # when
        sdk = razorpay.Client(auth=("rzp_test_cmd", "cmd-secret"), base_url=base_url)
        # then
        with pytest.raises(BadRequestError, match="does not exist"):
            sdk.order.fetch("order_nothing00000", timeout=2)
        assert "cmd-secret" not in first
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped" in out
