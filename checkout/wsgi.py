"""WSGI entry point (gunicorn checkout.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")
application = get_wsgi_application()
