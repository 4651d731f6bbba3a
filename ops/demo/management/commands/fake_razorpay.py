"""Serve the local fake Razorpay API until interrupted."""
import signal
import threading

from django.conf import settings
from django.core.management.base import CommandError

from checkout import commands
from checkout.commands import UsageError
from ops.demo.fake_gateway import FakeRazorpay

DEV_KEY_ID = "rzp_test_fake"
DEV_KEY_SECRET = "fake-key-secret"


def probability(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError(raw)
    return value


class Command(commands.Command):
    help = (
        "Serve a fake Razorpay /v1 API (payments, orders, capture, refund) on plain http for development. "
        "Point RAZORPAY_BASE_URL at it; it accepts RAZORPAY_KEY_ID/RAZORPAY_KEY_SECRET when set."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--seed", type=int, default=0, help="seed of the fault and id generator")
        parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
        parser.add_argument("--p-5xx", type=probability, default=0.0, help="share of 503 SERVER_ERROR answers")
        parser.add_argument("--p-429", type=probability, default=0.0, help="share of 429 answers")
        parser.add_argument("--p-timeout", type=probability, default=0.0,
                            help="share of requests held without an answer")
        parser.add_argument("--p-html", type=probability, default=0.0, help="share of HTML error pages")

    def handle(self, *args, **options):
        if options["port"] < 0 or options["port"] > 65535:
            raise UsageError(f"--port {options['port']} is not a TCP port")
        if not 0 <= options["latency_ms"] < float("inf"):
            raise UsageError(f"--latency-ms must be 0 or more, got {options['latency_ms']}")
        key_id = settings.RAZORPAY_KEY_ID or DEV_KEY_ID
        key_secret = settings.RAZORPAY_KEY_SECRET or DEV_KEY_SECRET
        fake = FakeRazorpay(key_id, key_secret, host=options["host"], port=options["port"], seed=options["seed"])
        try:
            fake.set_faults(
                latency_ms=options["latency_ms"], p_5xx=options["p_5xx"], p_429=options["p_429"],
                p_timeout=options["p_timeout"], p_html=options["p_html"],
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            fake.start()
        except OSError as exc:
            raise CommandError(f"cannot serve the fake gateway on {options['host']}:{options['port']}: {exc}") from None
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        secret_note = "RAZORPAY_KEY_SECRET" if settings.RAZORPAY_KEY_SECRET else f"{DEV_KEY_SECRET!r}"
        self.stdout.write(
            f"fake Razorpay at {fake.base_url} (key id {key_id!r}, secret {secret_note}); Ctrl-C stops it\n"
            f"  RAZORPAY_BASE_URL={fake.base_url}"
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            fake.stop()
            self.stdout.write("fake Razorpay stopped")
