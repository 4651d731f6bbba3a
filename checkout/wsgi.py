"""WSGI entry point (gunicorn checkout.wsgi --preload)."""
import os
import sys

from django.core.wsgi import get_wsgi_application

from checkout.env import stop_on_bad_configuration

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")


def _exit_status() -> int:
    """2, as every entry point exits on a bad setting; 3 when a gunicorn worker loads the app (no
    --preload), since gunicorn's master starts a worker that exits 2 again and again, and stops on 3."""
    frame = sys._getframe()
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("gunicorn.workers") and frame.f_code.co_name == "load_wsgi":
            return 3
        frame = frame.f_back
    return 2


with stop_on_bad_configuration(_exit_status()):
    application = get_wsgi_application()
