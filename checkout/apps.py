"""The project's own app, last in INSTALLED_APPS: once every other app is loaded it imports the classes
that settings name by dotted path (a bad one stops start-up with one line, as every bad setting does),
and it holds the deploy check that flags the development SECRET_KEY."""
from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from checkout.env import secret_key_weakness

# Each setting that names classes, and the method every class it names must have.
CLASS_SETTINGS = {"EMAIL_BACKEND": "send_messages", "ALERT_BACKENDS": "send"}


def import_named_classes() -> None:
    for name, method in CLASS_SETTINGS.items():
        value = getattr(settings, name)
        for path in [value] if isinstance(value, str) else value:
            try:
                named = import_string(path)
            except Exception as exc:  # ImportError, or whatever the module raised while importing
                raise ImproperlyConfigured(f"{name}={path!r} cannot be imported: {exc}") from None
            if not callable(getattr(named, method, None)):
                raise ImproperlyConfigured(f"{name}={path!r} is not a class with {method}()")


@checks.register(checks.Tags.security, deploy=True)
def check_secret_key(app_configs, **kwargs) -> list[checks.CheckMessage]:
    weakness = secret_key_weakness(settings.SECRET_KEY, settings.INSECURE_DEV_SECRET_KEY)
    if weakness is None:
        return []
    return [
        checks.Error(
            f"SECRET_KEY {weakness}.",
            hint="Set SECRET_KEY to a random string of 50 or more characters, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'.",
            id="checkout.E001",
        )
    ]


class CheckoutConfig(AppConfig):
    name = "checkout"
    verbose_name = "Checkout"

    def ready(self) -> None:
        import_named_classes()
