"""A local fake of Razorpay's /v1 API, served over real HTTP for the SDK, the demo and the tests.

It answers what payments/gateway.py calls (payment and order fetch, an order's payments,
capture, refund (idempotent by X-Refund-Idempotency), a payment's refunds) in Razorpay's JSON
and error shapes, checks basic auth, keeps state a test can script (statuses, late transitions,
capture outcomes, auto-refunds), injects faults (latency, 5xx, 429, timeouts, HTML bodies,
answers lost after a POST was applied) from a seeded RNG, and writes the signed webhook
deliveries Razorpay would post about a payment. Faults are drawn in request arrival order, so
a single-threaded client sees the same sequence for the same seed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import string
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PAYMENT_STATUSES = ("created", "authorized", "captured", "refunded", "failed")
# What a capture does to an authorized payment: succeed, fail the payment, answer a
# transient GATEWAY_ERROR and leave it authorized (a later capture may succeed), or refuse
# it with a BAD_REQUEST_ERROR and leave it authorized (asking again gets the same answer).
CAPTURE_OUTCOMES = ("capture", "fail", "gateway_error", "refuse")

_ALNUM = string.ascii_letters + string.digits
_ROUTES = [
    ("GET", re.compile(r"^/v1/payments/(?P<id>[^/]+)$"), "payment_fetch"),
    ("GET", re.compile(r"^/v1/orders/(?P<id>[^/]+)$"), "order_fetch"),
    ("GET", re.compile(r"^/v1/orders/(?P<id>[^/]+)/payments$"), "order_payments"),
    ("POST", re.compile(r"^/v1/payments/(?P<id>[^/]+)/capture$"), "payment_capture"),
    ("POST", re.compile(r"^/v1/payments/(?P<id>[^/]+)/refund$"), "payment_refund"),
    ("GET", re.compile(r"^/v1/payments/(?P<id>[^/]+)/refunds$"), "payment_refunds"),
]
# Webhook events the fake writes, and the entities each one carries besides the payment.
WEBHOOK_EVENTS = {
    "payment.authorized": (), "payment.captured": (), "payment.failed": (),
    "order.paid": ("order",), "refund.processed": ("refund",),
}
HTML_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


class FakeError(Exception):
    """An error answer in Razorpay's shape."""

    def __init__(self, status: int, code: str, description: str, *, field_name=None,
                 source="business", step="payment_initiation", reason="input_validation_failed"):
        super().__init__(description)
        self.status = status
        self.body = {"error": {
            "code": code, "description": description, "field": field_name, "source": source,
            "step": step, "reason": reason, "metadata": {},
        }}


def _bad_request(description: str, **kwargs) -> FakeError:
    return FakeError(400, "BAD_REQUEST_ERROR", description, **kwargs)


@dataclass
class Faults:
    latency_ms: float = 0.0
    p_5xx: float = 0.0
    p_429: float = 0.0
    p_timeout: float = 0.0
    p_html: float = 0.0
    # How long a "timeout" holds the connection before dropping it: longer than any client timeout.
    timeout_hold_s: float = 30.0
    html_status: int = 502
    # True: a faulted POST is applied first and only its answer is lost (the nasty case
    # where the gateway captured but the client never heard).
    after_apply: bool = False
    # Transient faults: a payment or order id meets at most this many (then its calls go through),
    # so a client that retries is bound to get its answers. None: no bound.
    max_per_id: int | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """One POST Razorpay would make: the raw body, its X-Razorpay-Signature and X-Razorpay-Event-Id."""

    event_id: str
    event: str
    body: bytes
    signature: str

    def headers(self) -> dict[str, str]:
        return {"X-Razorpay-Signature": self.signature, "X-Razorpay-Event-Id": self.event_id,
                "Content-Type": "application/json"}


@dataclass
class _Payment:
    id: str
    order_id: str | None
    amount: int
    currency: str
    status: str
    method: str = "card"
    email: str = "student@example.com"
    contact: str = "+919000090000"
    amount_refunded: int = 0
    error_code: str | None = None
    error_description: str | None = None
    error_reason: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))
    captured_at: int | None = None
    on_capture: str = "capture"
    # Statuses the payment moves through, one per fetch of it (a payment that turns authorized late).
    script: deque = field(default_factory=deque)

    def entity(self) -> dict:
        refund_status = None
        if self.amount_refunded:
            refund_status = "full" if self.amount_refunded >= self.amount else "partial"
        return {
            "id": self.id, "entity": "payment", "amount": self.amount, "currency": self.currency,
            "status": self.status, "order_id": self.order_id, "invoice_id": None,
            "international": False, "method": self.method, "amount_refunded": self.amount_refunded,
            "refund_status": refund_status, "captured": self.captured_at is not None,
            "description": None, "card_id": None, "bank": None, "wallet": None, "vpa": None,
            "email": self.email, "contact": self.contact, "notes": [],
            "fee": None, "tax": None,
            "error_code": self.error_code, "error_description": self.error_description,
            "error_source": "customer" if self.error_code else None,
            "error_step": "payment_authorization" if self.error_code else None,
            "error_reason": self.error_reason, "acquirer_data": {}, "created_at": self.created_at,
        }


@dataclass
class _Order:
    id: str
    amount: int
    currency: str
    receipt: str | None
    created_at: int = field(default_factory=lambda: int(time.time()))


class FakeRazorpay:
    """The fake gateway: `start()`, point the SDK at `base_url`, script state, `stop()`."""

    def __init__(self, key_id: str, key_secret: str, host: str = "127.0.0.1", port: int = 0, seed: int = 0):
        self.key_id = key_id
        self.key_secret = key_secret
        self._auth = "Basic " + base64.b64encode(f"{key_id}:{key_secret}".encode()).decode()
        self._host = host
        self._port = port
        self._rng = random.Random(seed)
        self._ids = random.Random(f"ids-{seed}")
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._orders: dict[str, _Order] = {}
        self._payments: dict[str, _Payment] = {}
        # Each order's payments, in the order they were added: an order's lookups cost its own payments
        # only, whatever the number of payments held (a bench holds tens of thousands).
        self._order_payments: dict[str, list[_Payment]] = {}
        self._refunds: list[dict] = []
        # X-Refund-Idempotency key -> (the request's body, the refund it made): a retry gets the same refund.
        self._refund_keys: dict[str, tuple[dict, dict]] = {}
        self._captures: Counter = Counter()
        self._faults_by_id: Counter = Counter()
        self._calls: list[dict] = []
        self.faults = Faults()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeRazorpay":
        handler = type("Handler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer((self._host, self._port), handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 256
        server.server_bind()
        server.server_activate()
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-razorpay", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases connections held by the timeout fault
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeRazorpay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake gateway is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- scripting ---------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return prefix + "".join(self._ids.choice(_ALNUM) for _ in range(14))

    def add_order(self, *, amount: int, currency: str = "INR", order_id: str | None = None,
                  receipt: str | None = None) -> dict:
        _check_amount(amount)
        with self._lock:
            order = _Order(id=order_id or self._new_id("order_"), amount=amount, currency=currency, receipt=receipt)
            self._orders[order.id] = order
            return self._order_entity(order)

    def add_payment(self, *, order_id: str | None = None, amount: int | None = None, currency: str | None = None,
                    status: str = "authorized", payment_id: str | None = None, on_capture: str = "capture",
                    then: tuple[str, ...] | list[str] = (), error_code: str | None = None,
                    error_description: str | None = None, method: str = "card") -> dict:
        """Add a payment (to `order_id`, taking its amount and currency unless given).

        `then` lists statuses the payment takes, one per later fetch of it; `on_capture`
        is what a capture does (see CAPTURE_OUTCOMES).
        """
        _check_status(status)
        for later in then:
            _check_status(later)
        if on_capture not in CAPTURE_OUTCOMES:
            raise ValueError(f"on_capture must be one of {CAPTURE_OUTCOMES}")
        with self._lock:
            order = self._orders.get(order_id) if order_id else None
            if order_id and order is None:
                raise KeyError(f"no order {order_id}")
            amount = amount if amount is not None else (order.amount if order else None)
            if amount is None:
                raise ValueError("amount is required for a payment without an order")
            _check_amount(amount)
            payment = _Payment(
                id=payment_id or self._new_id("pay_"), order_id=order_id, amount=amount,
                currency=currency or (order.currency if order else "INR"), status="created",
                on_capture=on_capture, script=deque(then), method=method,
            )
            self._payments[payment.id] = payment
            if order_id:
                self._order_payments.setdefault(order_id, []).append(payment)
            self._move(payment, status, error_code=error_code, error_description=error_description)
            return payment.entity()

    def set_status(self, payment_id: str, status: str, *, error_code: str | None = None,
                   error_description: str | None = None) -> dict:
        """Move a payment to `status` now, as the gateway would on its own."""
        _check_status(status)
        with self._lock:
            payment = self._payment(payment_id)
            self._move(payment, status, error_code=error_code, error_description=error_description)
            return payment.entity()

    def set_capture_outcome(self, payment_id: str, on_capture: str) -> None:
        if on_capture not in CAPTURE_OUTCOMES:
            raise ValueError(f"on_capture must be one of {CAPTURE_OUTCOMES}")
        with self._lock:
            self._payment(payment_id).on_capture = on_capture

    def auto_refund(self, payment_id: str) -> dict:
        """What Razorpay does to a payment left authorized for days: refund it in full."""
        with self._lock:
            payment = self._payment(payment_id)
            if payment.status != "authorized":
                raise ValueError(f"{payment_id} is {payment.status}, only authorized payments are auto-refunded")
            self._add_refund(payment, payment.amount)
            return payment.entity()

    def set_faults(self, **changes) -> Faults:
        """Change fault injection (latency_ms, p_5xx, p_429, p_timeout, p_html, ...); unnamed ones stay."""
        with self._lock:
            for name, value in changes.items():
                if not hasattr(self.faults, name):
                    raise TypeError(f"unknown fault {name!r}")
                setattr(self.faults, name, value)
            total = self.faults.p_5xx + self.faults.p_429 + self.faults.p_timeout + self.faults.p_html
            if total > 1:
                raise ValueError("fault probabilities add up to more than 1")
            return self.faults

    def payment(self, payment_id: str) -> dict:
        with self._lock:
            return self._payment(payment_id).entity()

    def order(self, order_id: str) -> dict:
        with self._lock:
            return self._order_entity(self._orders[order_id])

    def webhook(self, event: str, payment_id: str, *, secret: str, entity: dict | None = None,
                event_id: str | None = None) -> WebhookDelivery:
        """The signed delivery of `event` about a payment, as Razorpay posts it.

        The payment is as it stands now unless `entity` (a snapshot taken earlier, for a
        delivery that arrives late) is given; `event_id` repeats an earlier delivery's id
        (Razorpay's retries keep it).
        """
        if event not in WEBHOOK_EVENTS:
            raise ValueError(f"unknown webhook event {event!r} (one of {', '.join(WEBHOOK_EVENTS)})")
        if not secret:
            raise ValueError("a webhook delivery is signed: give the webhook secret")
        with self._lock:
            payment = self._payment(payment_id)
            entity = dict(entity) if entity is not None else payment.entity()
            payload = {"payment": {"entity": entity}}
            if "order" in WEBHOOK_EVENTS[event]:
                if payment.order_id is None:
                    raise ValueError(f"{payment_id} has no order for an order.paid event")
                payload["order"] = {"entity": self._order_entity(self._orders[payment.order_id])}
            if "refund" in WEBHOOK_EVENTS[event]:
                refunds = [r for r in self._refunds if r["payment_id"] == payment_id]
                if not refunds:
                    raise ValueError(f"{payment_id} has no refund for a refund.processed event")
                payload["refund"] = {"entity": dict(refunds[-1])}
            event_id = event_id or self._new_id("evt_")
        body = json.dumps({
            "entity": "event", "account_id": "acc_FakeRazorpay01", "event": event,
            "contains": ["payment", *WEBHOOK_EVENTS[event]], "payload": payload, "created_at": int(time.time()),
        }, separators=(",", ":")).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return WebhookDelivery(event_id=event_id, event=event, body=body, signature=signature)

    # --- observation -------------------------------------------------------------------------
    def captures(self, payment_id: str) -> int:
        """How many captures of this payment the gateway applied (a second one would be a double charge)."""
        with self._lock:
            return self._captures[payment_id]

    def refunds(self, payment_id: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._refunds if payment_id is None or r["payment_id"] == payment_id]

    def calls(self, operation: str | None = None) -> list[dict]:
        """The request log: operation, method, path, status, fault, resource id, arrival (`at`, epoch seconds)."""
        with self._lock:
            return [dict(c) for c in self._calls if operation is None or c["operation"] == operation]

    # --- state transitions (under the lock) ----------------------------------------------------
    def _payment(self, payment_id: str) -> _Payment:
        try:
            return self._payments[payment_id]
        except KeyError:
            raise KeyError(f"no payment {payment_id}") from None

    def _move(self, payment: _Payment, status: str, *, error_code=None, error_description=None) -> None:
        if status == "captured" and payment.captured_at is None:
            payment.captured_at = int(time.time())
        if status == "failed":
            payment.error_code = error_code or "BAD_REQUEST_ERROR"
            payment.error_description = error_description or "Payment failed because the bank declined it"
            payment.error_reason = "payment_failed"
        elif status in ("authorized", "captured"):
            payment.error_code = payment.error_description = payment.error_reason = None
        if status == "refunded" and payment.amount_refunded < payment.amount:
            self._add_refund(payment, payment.amount - payment.amount_refunded)
            return
        payment.status = status

    def _add_refund(self, payment: _Payment, amount: int, notes: dict | None = None) -> dict:
        refund = {
            "id": self._new_id("rfnd_"), "entity": "refund", "amount": amount, "currency": payment.currency,
            "payment_id": payment.id, "notes": dict(notes) if notes else [], "receipt": None,
            "acquirer_data": {"arn": None},
            "created_at": int(time.time()), "batch_id": None, "status": "processed",
            "speed_processed": "normal", "speed_requested": "normal",
        }
        self._refunds.append(refund)
        payment.amount_refunded += amount
        if payment.amount_refunded >= payment.amount:
            payment.status = "refunded"
        return refund

    def _order_entity(self, order: _Order) -> dict:
        payments = self._order_payments.get(order.id, [])
        paid = sum(p.amount for p in payments if p.captured_at is not None)
        if paid >= order.amount:
            status = "paid"
        elif payments:
            status = "attempted"
        else:
            status = "created"
        return {
            "id": order.id, "entity": "order", "amount": order.amount, "amount_paid": paid,
            "amount_due": max(order.amount - paid, 0), "currency": order.currency, "receipt": order.receipt,
            "offer_id": None, "status": status, "attempts": len(payments), "notes": [],
            "created_at": order.created_at,
        }

    # --- operations (called by the handler, under the lock) ------------------------------------
    def _op_payment_fetch(self, payment_id: str, body: dict) -> dict:
        payment = self._find_payment(payment_id)
        if payment.script:
            self._move(payment, payment.script.popleft())
        return payment.entity()

    def _op_order_fetch(self, order_id: str, body: dict) -> dict:
        return self._order_entity(self._find_order(order_id))

    def _op_order_payments(self, order_id: str, body: dict) -> dict:
        order = self._find_order(order_id)
        items = [p.entity() for p in self._order_payments.get(order.id, [])]
        items.sort(key=lambda p: p["created_at"], reverse=True)
        return {"entity": "collection", "count": len(items), "items": items}

    def _op_payment_capture(self, payment_id: str, body: dict) -> dict:
        payment = self._find_payment(payment_id)
        amount = body.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise _bad_request("The amount must be an integer.", field_name="amount")
        currency = body.get("currency")
        if not currency:
            raise _bad_request("The currency field is required.", field_name="currency")
        if payment.status == "captured" or payment.captured_at is not None:
            raise _bad_request("This payment has already been captured")
        if payment.status != "authorized":
            raise _bad_request("Only payments which have been authorized and not yet captured can be captured")
        if currency != payment.currency:
            raise _bad_request("Currency should be same as payment currency", field_name="currency")
        if amount != payment.amount:
            raise _bad_request("Capture amount must be equal to the amount authorized", field_name="amount")
        if payment.on_capture == "gateway_error":
            raise FakeError(502, "GATEWAY_ERROR", "Payment processing failed due to error at bank or wallet gateway",
                            source="gateway", step="payment_capture", reason="gateway_technical_error")
        if payment.on_capture == "refuse":
            raise _bad_request("Capture of this payment is not allowed by the issuer", step="payment_capture",
                               reason="capture_not_allowed")
        if payment.on_capture == "fail":
            self._move(payment, "failed", error_description="Payment capture failed at the bank")
            raise _bad_request("Payment capture failed at the bank", step="payment_capture", reason="payment_failed")
        self._move(payment, "captured")
        self._captures[payment.id] += 1
        return payment.entity()

    def _op_payment_refunds(self, payment_id: str, body: dict) -> dict:
        payment = self._find_payment(payment_id)
        items = [dict(r) for r in reversed(self._refunds) if r["payment_id"] == payment.id]
        return {"entity": "collection", "count": len(items), "items": items}

    def _op_payment_refund(self, payment_id: str, body: dict, idempotency_key: str | None = None) -> dict:
        if idempotency_key is not None:
            if not re.fullmatch(r"[A-Za-z0-9_-]{10,}", idempotency_key):
                raise _bad_request("The idempotency key is invalid", field_name="X-Refund-Idempotency")
            if idempotency_key in self._refund_keys:
                first_body, refund = self._refund_keys[idempotency_key]
                if first_body != body:
                    raise _bad_request("The request body differs from the first request with this idempotency key")
                return dict(refund)
        refund = self._refund(payment_id, body)
        if idempotency_key is not None:
            self._refund_keys[idempotency_key] = (body, refund)
        return dict(refund)

    def _refund(self, payment_id: str, body: dict) -> dict:
        payment = self._find_payment(payment_id)
        if payment.status not in ("captured", "authorized"):
            if payment.status == "refunded":
                raise _bad_request("The payment has been fully refunded already")
            raise _bad_request("Only authorized or captured payments can be refunded")
        remaining = payment.amount - payment.amount_refunded
        amount = body.get("amount", remaining)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise _bad_request("The amount must be an integer greater than 0.", field_name="amount")
        if amount > remaining:
            raise _bad_request("The refund amount provided is greater than amount captured", field_name="amount")
        if payment.status == "authorized" and amount != payment.amount:
            raise _bad_request("An authorized payment can only be refunded in full", field_name="amount")
        notes = body.get("notes")
        return self._add_refund(payment, amount, notes if isinstance(notes, dict) else None)

    def _find_payment(self, payment_id: str) -> _Payment:
        payment = self._payments.get(payment_id)
        if payment is None:
            raise _bad_request("The id provided does not exist", field_name="id")
        return payment

    def _find_order(self, order_id: str) -> _Order:
        order = self._orders.get(order_id)
        if order is None:
            raise _bad_request("The id provided does not exist", field_name="id")
        return order

    # --- request handling --------------------------------------------------------------------
    def _draw_fault(self, resource_id: str | None = None) -> str | None:
        with self._lock:
            f = self.faults
            roll = self._rng.random()
            for name, p in (("timeout", f.p_timeout), ("5xx", f.p_5xx), ("429", f.p_429), ("html", f.p_html)):
                if roll < p:
                    if f.max_per_id is not None and resource_id is not None:
                        if self._faults_by_id[resource_id] >= f.max_per_id:
                            return None
                        self._faults_by_id[resource_id] += 1
                    return name
                roll -= p
            return None

    def _log(self, **entry) -> None:
        with self._lock:
            self._calls.append(entry)


def _check_status(status: str) -> None:
    if status not in PAYMENT_STATUSES:
        raise ValueError(f"unknown payment status {status!r} (one of {PAYMENT_STATUSES})")


def _check_amount(amount) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 100:
        raise ValueError("amount is integer paise, at least 100")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeRazorpay
    protocol_version = "HTTP/1.1"  # keep-alive, as against the real API
    # Headers and body go out in two writes; without this, Nagle + delayed ACK add 40 ms a call.
    disable_nagle_algorithm = True
    server_version = "FakeRazorpay/1"

    def log_message(self, format, *args) -> None:  # the call log replaces stderr noise
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        fake = self.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        operation, resource_id = "unknown", None
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                operation, resource_id = name, match["id"]
                break
        entry = {"operation": operation, "method": method, "path": path, "id": resource_id, "fault": None,
                 "at": time.time()}

        latency = fake.faults.latency_ms
        if latency and fake._stopping.wait(latency / 1000):
            return
        fault = fake._draw_fault(resource_id)
        entry["fault"] = fault
        apply_first = fault is not None and fake.faults.after_apply and method == "POST"
        if fault is not None and not apply_first:
            self._fault(fault, entry)
            return

        status, body = self._dispatch(operation, resource_id, raw)
        if apply_first:
            self._fault(fault, entry)
            return
        entry["status"] = status
        fake._log(**entry)
        self._send_json(status, body)

    def _dispatch(self, operation: str, resource_id: str | None, raw: bytes) -> tuple[int, dict]:
        fake = self.fake
        if self.headers.get("Authorization") != fake._auth:
            return 401, FakeError(401, "BAD_REQUEST_ERROR", "Authentication failed",
                                  source="NA", step="NA", reason="NA").body
        if operation == "unknown":
            return 400, _bad_request("The requested URL was not found on the server",
                                     source="NA", step="NA", reason="NA").body
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return 400, _bad_request("The request body is not valid JSON").body
        # Razorpay's idempotent refunds: the same key (and body) returns the refund made the first time.
        extra = {"idempotency_key": self.headers["X-Refund-Idempotency"]} if (
            operation == "payment_refund" and self.headers.get("X-Refund-Idempotency") is not None) else {}
        try:
            with fake._lock:
                return 200, getattr(fake, f"_op_{operation}")(resource_id, body, **extra)
        except FakeError as exc:
            return exc.status, exc.body

    def _fault(self, fault: str, entry: dict) -> None:
        fake = self.fake
        if fault == "timeout":
            entry["status"] = None
            fake._log(**entry)
            fake._stopping.wait(fake.faults.timeout_hold_s)
            self.close_connection = True
            return
        if fault == "html":
            entry["status"] = fake.faults.html_status
            fake._log(**entry)
            self._send(fake.faults.html_status, HTML_BODY, "text/html")
            return
        if fault == "429":
            entry["status"] = 429
            fake._log(**entry)
            body = FakeError(429, "BAD_REQUEST_ERROR", "Too many requests", source="NA", step="NA",
                             reason="NA").body
            self._send_json(429, body, extra_headers={"Retry-After": "1"})
            return
        entry["status"] = 503
        fake._log(**entry)
        self._send_json(503, FakeError(503, "SERVER_ERROR", "The server encountered an error. "
                                       "The incident has been reported to admins", source="NA",
                                       step="NA", reason="NA").body)

    def _send_json(self, status: int, body: dict, extra_headers: dict | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json; charset=UTF-8", extra_headers)

    def _send(self, status: int, payload: bytes, content_type: str, extra_headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra_headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
