"""Operational HTTP endpoints."""
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET


@require_GET
def health_live(request):
    """Liveness: the process answers. Touches no dependency."""
    return JsonResponse({"status": "alive", "timestamp": timezone.now().isoformat()})
