"""Operational HTTP endpoints: liveness, health, Prometheus metrics.

/metrics and the detail of /health/ are for operators: with OPS_TOKEN or
OPS_ALLOWED_NETWORKS set, only a request bearing the token or coming from an allowed
address gets them. The status code of /health/ (and its status word) stays public, for
uptime monitors and load balancers.
"""
import hmac
import logging
from ipaddress import ip_address

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.http import http_date
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from ops.maintenance.health import health_report, report_json
from ops.maintenance.prometheus import exposition

log = logging.getLogger(__name__)


def ops_access_granted(request) -> bool:
    """True when the request may see operational detail: nothing configured (open), the bearer
    token (compared in constant time) or a peer address inside OPS_ALLOWED_NETWORKS."""
    token, networks = settings.OPS_TOKEN, settings.OPS_ALLOWED_NETWORKS
    if not token and not networks:
        return True
    if token:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return True
    if networks:
        try:
            peer = ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        peer = getattr(peer, "ipv4_mapped", None) or peer
        return any(peer in network for network in networks)
    return False


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
        if not ops_access_granted(request):
            body = {"status": body["status"], "timestamp": body["timestamp"]}
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
    if not ops_access_granted(request):
        if not settings.OPS_TOKEN:
            return HttpResponse("not from an allowed address\n", status=403, content_type="text/plain")
        response = HttpResponse("send Authorization: Bearer <OPS_TOKEN>\n", status=401, content_type="text/plain")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
