"""The only module that talks to Razorpay: the official SDK, a timeout on every call, the
shared request-rate limit, and every failure turned into one small typed hierarchy.

    GatewayError                 base; .operation, .resource_id, .status, .code, .description
    ├── GatewayNotConfigured     no key id / secret in the settings
    ├── GatewayUnavailable       5xx, GATEWAY_ERROR, timeout, connection refused, HTML/non-JSON body (retryable)
    ├── GatewayRateLimited       429 from Razorpay, or no slot under RAZORPAY_RATE_LIMIT (retryable; .retry_after)
    ├── GatewayAuthError         401/403: bad key id or secret
    └── GatewayRejected          other 4xx: Razorpay's business error (.already_captured, .not_found)

The SDK raises by the error *code* in the body and drops the HTTP status, so each thread's
client records the last response it received and errors are classified by status first.
Errors carry operation and ids, never credentials.
"""
from __future__ import annotations

import os
import re
import threading
from importlib.metadata import PackageNotFoundError, version

import razorpay
import requests
from django.conf import settings
from razorpay import errors as sdk_errors

from payments import ratelimit

RATE_LIMIT_KEY = "razorpay"
# Razorpay's X-Refund-Idempotency: at least 10 of these characters (64 at most here).
REFUND_KEY = re.compile(r"[A-Za-z0-9_-]{10,64}")

try:
    _SDK_VERSION = version("razorpay")
except PackageNotFoundError:  # pragma: no cover - the SDK is a dependency
    _SDK_VERSION = ""


class GatewayError(Exception):
    retryable = False

    def __init__(self, message: str, *, operation: str, resource_id: str | None = None,
                 status: int | None = None, code: str = "", description: str = "", reason: str = ""):
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.resource_id = resource_id
        self.status = status
        self.code = code
        self.description = description
        self.reason = reason

    def __str__(self) -> str:
        target = f" {self.resource_id}" if self.resource_id else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"razorpay {self.operation}{target}: {self.message}{status}"


class GatewayNotConfigured(GatewayError):
    pass


class GatewayUnavailable(GatewayError):
    retryable = True


class GatewayRateLimited(GatewayError):
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class GatewayAuthError(GatewayError):
    pass


class GatewayRejected(GatewayError):
    @property
    def already_captured(self) -> bool:
        return "already been captured" in self.description.lower()

    @property
    def not_found(self) -> bool:
        return "does not exist" in self.description.lower()


class _Client(razorpay.Client):
    # The SDK looks its own version up through pkg_resources on every request (about 1 ms).
    def _get_version(self) -> str:
        return _SDK_VERSION


class _ThreadClient:
    """One SDK client (and so one requests.Session) per thread, remembering its last response."""

    def __init__(self, config: tuple[str, str, str]):
        key_id, key_secret, base_url = config
        self.config = config
        options = {"base_url": base_url.rstrip("/")} if base_url else {}
        self.client = _Client(auth=(key_id, key_secret), **options)
        session = self.client.session
        # requests scans the whole environment for proxy and CA-bundle variables on every
        # call (about a millisecond of CPU, which the sync pays thousands of times under one
        # GIL): read them once per client instead. Credentials are explicit, so .netrc never applies.
        session.proxies.update(requests.utils.get_environ_proxies(self.client.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
        session.hooks["response"].append(self._remember)
        self.last_response: requests.Response | None = None

    def _remember(self, response: requests.Response, *args, **kwargs) -> None:
        self.last_response = response


_local = threading.local()


def _thread_client(operation: str, resource_id: str | None) -> _ThreadClient:
    key_id, key_secret = settings.RAZORPAY_KEY_ID, settings.RAZORPAY_KEY_SECRET
    if not key_id or not key_secret:
        raise GatewayNotConfigured(
            "RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET are not set", operation=operation, resource_id=resource_id,
        )
    config = (key_id, key_secret, settings.RAZORPAY_BASE_URL or "")
    current = getattr(_local, "client", None)
    if current is None or current.config != config:
        if current is not None:
            current.client.session.close()
        current = _ThreadClient(config)
        _local.client = current
    return current


def _throttle(operation: str, resource_id: str | None) -> None:
    try:
        ratelimit.acquire(
            RATE_LIMIT_KEY, rate=settings.RAZORPAY_RATE_LIMIT, max_wait=settings.RAZORPAY_RATE_MAX_WAIT,
        )
    except ratelimit.RateLimitExceeded as exc:
        raise GatewayRateLimited(
            f"local request-rate limit ({settings.RAZORPAY_RATE_LIMIT:g}/s) reached",
            retry_after=exc.retry_after, operation=operation, resource_id=resource_id,
        ) from None


def _call(operation: str, resource_id: str | None, send) -> dict:
    holder = _thread_client(operation, resource_id)
    _throttle(operation, resource_id)
    holder.last_response = None
    try:
        result = send(holder.client, settings.RAZORPAY_TIMEOUT)
    except Exception as exc:  # the SDK and requests raise many unrelated types; all are classified
        raise _classify(exc, holder.last_response, operation, resource_id) from exc
    if not isinstance(result, dict):
        raise GatewayUnavailable(
            "unexpected response body (not a JSON object)", operation=operation, resource_id=resource_id,
            status=getattr(holder.last_response, "status_code", None),
        )
    return result


def _error_fields(response: requests.Response | None) -> tuple[str, str, str]:
    if response is None:
        return "", "", ""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", "", ""
    if not isinstance(error, dict):
        return "", "", ""
    return str(error.get("code") or ""), str(error.get("description") or ""), str(error.get("reason") or "")


def _retry_after(response: requests.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _classify(exc: Exception, response: requests.Response | None, operation: str,
              resource_id: str | None) -> GatewayError:
    where = {"operation": operation, "resource_id": resource_id}
    timeout = settings.RAZORPAY_TIMEOUT
    if isinstance(exc, requests.Timeout):
        return GatewayUnavailable(f"no answer within {timeout:g}s", **where)
    if isinstance(exc, requests.ConnectionError):
        return GatewayUnavailable(f"connection failed ({type(exc).__name__})", **where)
    status = response.status_code if response is not None else None
    code, description, reason = _error_fields(response)
    fields = {**where, "status": status, "code": code, "description": description, "reason": reason}
    if status == 429:
        return GatewayRateLimited(
            description or "too many requests", retry_after=_retry_after(response), **fields,
        )
    if status in (401, 403):
        return GatewayAuthError(description or "authentication failed", **fields)
    if isinstance(exc, ValueError) and not code:  # the SDK's response.json() on an HTML or empty body
        return GatewayUnavailable("non-JSON response body", **fields)
    if status is not None and status >= 500:
        return GatewayUnavailable(description or "server error", **fields)
    if status is not None and 400 <= status < 500:
        return GatewayRejected(description or "request rejected", **fields)
    # No status to go by: fall back on the SDK's reading of the error code.
    if isinstance(exc, sdk_errors.BadRequestError):
        return GatewayRejected(description or str(exc) or "request rejected", **fields)
    if isinstance(exc, (sdk_errors.GatewayError, sdk_errors.ServerError, requests.RequestException)):
        return GatewayUnavailable(description or str(exc) or "gateway error", **fields)
    return GatewayUnavailable(f"unexpected {type(exc).__name__}", **fields)


def _check_id(value: str, prefix: str, what: str) -> None:
    if not isinstance(value, str) or not value.startswith(prefix) or "/" in value:
        raise ValueError(f"{what} must be a Razorpay id starting with {prefix!r}, got {value!r}")


def fetch_payment(payment_id: str) -> dict:
    """The payment entity (status, amount, currency, order_id, captured, error_code...)."""
    _check_id(payment_id, "pay_", "payment_id")
    return _call("payment.fetch", payment_id, lambda c, t: c.payment.fetch(payment_id, {}, timeout=t))


def fetch_order(order_id: str) -> dict:
    """The order entity (status created | attempted | paid, amount_paid, attempts...)."""
    _check_id(order_id, "order_", "order_id")
    return _call("order.fetch", order_id, lambda c, t: c.order.fetch(order_id, {}, timeout=t))


def fetch_order_payments(order_id: str) -> list[dict]:
    """Every payment attempt made against the order, newest first."""
    _check_id(order_id, "order_", "order_id")
    body = _call("order.payments", order_id, lambda c, t: c.order.payments(order_id, {}, timeout=t))
    items = body.get("items")
    if not isinstance(items, list):
        raise GatewayUnavailable("order payments answer has no items list", operation="order.payments",
                                 resource_id=order_id)
    return items


def capture(payment_id: str, amount_paise: int, currency: str) -> dict:
    """Capture an authorized payment for exactly its amount; returns the captured payment entity.

    A payment already captured is a GatewayRejected with `.already_captured` true: callers
    fetch the payment and carry on, they never capture again.
    """
    _check_id(payment_id, "pay_", "payment_id")
    _check_amount(amount_paise)
    _check_currency(currency)
    return _call(
        "payment.capture", payment_id,
        lambda c, t: c.payment.capture(payment_id, amount_paise, {"currency": currency}, timeout=t),
    )


def refund(payment_id: str, amount_paise: int | None = None, *, idempotency_key: str | None = None,
           notes: dict[str, str] | None = None) -> dict:
    """Refund a payment (in full when no amount is given); returns the refund entity.

    With `idempotency_key` (X-Refund-Idempotency: 10+ of [A-Za-z0-9_-]) a retry of the same request
    gets the refund the first one made, never a second; `notes` are kept on the refund at Razorpay.
    """
    _check_id(payment_id, "pay_", "payment_id")
    body: dict = {}
    if amount_paise is not None:
        _check_amount(amount_paise)
        body["amount"] = amount_paise
    if notes:
        body["notes"] = notes
    options = {}
    if idempotency_key is not None:
        if not REFUND_KEY.fullmatch(idempotency_key):
            raise ValueError(f"idempotency_key must be 10-64 of [A-Za-z0-9_-], got {idempotency_key!r}")
        options["headers"] = {"X-Refund-Idempotency": idempotency_key}
    return _call("payment.refund", payment_id,
                 lambda c, t: c.payment.refund(payment_id, body, timeout=t, **options))


def fetch_refunds(payment_id: str) -> list[dict]:
    """The payment's refunds, newest first (up to 100, Razorpay's largest page)."""
    _check_id(payment_id, "pay_", "payment_id")
    body = _call("payment.refunds", payment_id,
                 lambda c, t: c.payment.fetch_multiple_refund(payment_id, {"count": 100}, timeout=t))
    items = body.get("items")
    if not isinstance(items, list):
        raise GatewayUnavailable("payment refunds answer has no items list", operation="payment.refunds",
                                 resource_id=payment_id)
    return items


def _check_amount(amount_paise) -> None:
    if not isinstance(amount_paise, int) or isinstance(amount_paise, bool) or amount_paise <= 0:
        raise ValueError(f"amount_paise must be a positive integer, got {amount_paise!r}")


def _check_currency(currency) -> None:
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise ValueError(f"currency must be an ISO 4217 code like 'INR', got {currency!r}")
