from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo data, the local fake Razorpay, and the `demo`, `seed_demo` and `fake_razorpay` commands."""

    name = "ops.demo"
    label = "demo"
    verbose_name = "Demo"
