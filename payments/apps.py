from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"

    def ready(self) -> None:
        from payments import alerting  # noqa: F401  (registers the payment alert rules)
