"""Operational HTTP endpoints: liveness, health, Prometheus metrics."""
import logging

from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.http import http_date
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from ops.maintenance.health import health_report, report_json
from ops.maintenance.prometheus import exposition

log = logging.getLogger(__name__)


@require_GET
def health_live(request):
    """Liveness: the process answers. Touches no dependency."""
    return JsonResponse({"status": "alive", "timestamp": timezone.now().isoformat()})


# What never_cache writes, set directly: its generic header parsing costs about 20 µs a
# request, and monitors poll this view more than any other.
NO_STORE = "max-age=0, no-cache, no-store, must-revalidate, private"


@require_GET
def health(request):
    """Readiness and dependency health; `?strict=1` answers 503 on any failure, not only critical ones."""
    try:
        code, body = health_report(strict=request.GET.get("strict") in {"1", "true", "yes"})
        content = report_json(body)
    except Exception:  # a monitor must get JSON, never a 500 page
        log.exception("health report failed")
        code, content = 503, report_json({
            "status": "unhealthy", "timestamp": timezone.now().isoformat(), "error": "health report failed",
        })
    response = HttpResponse(content, status=code, content_type="application/json")
    response.headers["Expires"] = http_date()
    response.headers["Cache-Control"] = NO_STORE
    return response


@never_cache
@require_GET
def metrics(request):
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
