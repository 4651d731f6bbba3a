"""Checkout operations: the project package (settings, Celery app, URLs, WSGI)."""
from .celery import app as celery_app

__all__ = ("celery_app",)
