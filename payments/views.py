"""HTTP entry points of the payments app: the Razorpay webhook receiver."""
import logging

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from payments.webhooks import (
    MAX_BODY_BYTES,
    WebhookNotConfigured,
    WebhookRefused,
    webhook_receive,
    webhook_rejection_record,
)

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


class BodyUnreadable(Exception):
    """A chunked body on a server that does not mark where it ends: reading on could block for ever."""


class BodyTooLarge(Exception):
    """Over MAX_BODY_BYTES, as declared by Content-Length or as read from a chunked body."""


def _read_at_most(stream, limit: int) -> bytes:
    parts, left = [], limit
    while left > 0:
        part = stream.read(min(left, READ_CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _raw_body(request: HttpRequest) -> bytes:
    """The raw body; BodyTooLarge past MAX_BODY_BYTES, declared or found (reading stops one byte past it).

    With Content-Length, Django's request stream stops there. A chunked body has none, and
    Django's stream then reads nothing; the server's own input is read instead when the server
    ends it at the body's end (`wsgi.input_terminated`, as gunicorn does), else BodyUnreadable.
    """
    declared = request.META.get("CONTENT_LENGTH")
    if declared:
        try:
            size = int(declared)
        except ValueError:
            return b""
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        body = request.read(MAX_BODY_BYTES + 1)
    elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        if not request.META.get("wsgi.input_terminated"):
            raise BodyUnreadable("chunked body without Content-Length on a server that does not end its input")
        body = _read_at_most(request.META["wsgi.input"], MAX_BODY_BYTES + 1)
    else:
        return b""
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge
    return body


@csrf_exempt
@require_POST
def razorpay_webhook(request: HttpRequest) -> JsonResponse:
    """Store a signed Razorpay delivery and answer at once; a worker processes it.

    200 stored / duplicate (replay) / ignored (event type we do not handle); 400 bad signature,
    body or event id; 411 a chunked body the server cannot delimit; 413 body over 1 MiB (declared
    or chunked); 503 no webhook secret configured or database down (Razorpay retries non-2xx
    deliveries).
    """
    try:
        try:
            body = _raw_body(request)
        except BodyUnreadable as exc:
            webhook_rejection_record(reason="length_required", detail=str(exc))
            return JsonResponse({"error": "send Content-Length"}, status=411)
        except BodyTooLarge:
            webhook_rejection_record(reason="too_large", detail=f"body over {MAX_BODY_BYTES} bytes")
            return JsonResponse({"error": f"body larger than {MAX_BODY_BYTES} bytes"}, status=413)
        receipt = webhook_receive(
            body=body,
            signature=request.headers.get("X-Razorpay-Signature"),
            event_id=request.headers.get("X-Razorpay-Event-Id"),
        )
    except WebhookNotConfigured:
        log.error("razorpay webhook refused: RAZORPAY_WEBHOOK_SECRET is not set, deliveries cannot be verified")
        return JsonResponse({"error": "webhook receiver is not configured"}, status=503)
    except WebhookRefused as refused:
        return JsonResponse({"error": refused.reason}, status=400)
    except DatabaseError:
        log.exception("razorpay webhook not stored: database error (Razorpay will retry)")
        return JsonResponse({"error": "temporarily unavailable"}, status=503)
    return JsonResponse({"status": receipt.outcome, "event_id": receipt.event.event_id})
