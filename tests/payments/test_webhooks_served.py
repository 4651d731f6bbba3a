"""The webhook as gunicorn serves it: a chunked delivery (no Content-Length) over a raw socket is read whole,
within the size limit."""
import json
import secrets
import socket
from urllib.parse import urlsplit

import pytest

from payments.models import WebhookEvent
from payments.webhooks import MAX_BODY_BYTES, webhook_signature
from tests.payments.conftest import WEBHOOK_SECRET
from tests.payments.test_webhooks import URL, delivery
from tests.served import gunicorn

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def site(process_env, tmp_path):
    # A connection per request, so none outlives the test (its database is dropped at the end of the run).
    env = {**process_env, "SECRET_KEY": secrets.token_urlsafe(50), "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "DB_CONN_MAX_AGE": "0"}
    with gunicorn(env, tmp_path / "gunicorn.log", "-w", "1") as base:
        yield urlsplit(base)


def post_chunked(site, body: bytes, *, event_id: str, chunk: int = 1000) -> tuple[int, dict]:
    """POST `body` in chunks of `chunk` bytes with Transfer-Encoding: chunked and no Content-Length,
    as the TLS proxy in front of gunicorn passes a delivery on."""
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: {site.hostname}:{site.port}\r\nContent-Type: application/json\r\n"
        "X-Forwarded-Proto: https\r\n"
        f"Transfer-Encoding: chunked\r\nX-Razorpay-Signature: {webhook_signature(body, WEBHOOK_SECRET)}\r\n"
        f"X-Razorpay-Event-Id: {event_id}\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk]) for i in range(0, len(body), chunk)
    )
    with socket.create_connection((site.hostname, site.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            sock.sendall(chunks + b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            pass
        reply = b""
        while part := sock.recv(65536):
            reply += part
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}")


@pytest.mark.django_db(transaction=True)
def test_a_chunked_delivery_is_read_whole_and_stored(site):
    # given a signed delivery, sent in 13 chunks with no Content-Length
    body = delivery()
    # when
    status, answer = post_chunked(site, body, event_id="evt_Chunked0000001", chunk=30)
    print(f"\nchunked delivery of {len(body)} bytes: {status} {answer}")
    # then its signature holds over the whole body, and it is stored as sent
    assert (status, answer["status"]) == (200, "stored")
    assert WebhookEvent.objects.get(event_id="evt_Chunked0000001").payload == json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_a_chunked_delivery_over_the_limit_is_413(site):
    body = b'{"event":"payment.captured","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    status, answer = post_chunked(site, body, event_id="evt_Chunked0000002", chunk=64 * 1024)
    print(f"\nchunked delivery of {len(body)} bytes: {status} {answer}")
    assert status == 413
    assert not WebhookEvent.objects.exists()
