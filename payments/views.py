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


@csrf_exempt
@require_POST
def razorpay_webhook(request: HttpRequest) -> JsonResponse:
    """Store a signed Razorpay delivery and answer at once; a worker processes it.

    200 stored / duplicate (replay) / ignored (event type we do not handle); 400 bad signature,
    body or event id; 413 body over 1 MiB; 503 no webhook secret configured or database down
    (Razorpay retries non-2xx deliveries).
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    body = b"" if declared > MAX_BODY_BYTES else request.read(MAX_BODY_BYTES + 1)
    try:
        if declared > MAX_BODY_BYTES or len(body) > MAX_BODY_BYTES:
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
