"""What the gateway fault tests share: payments in every state mirrored at the fake Razorpay, payment_sync
run on real workers, and the money and effect invariants checked against the gateway's own record and
against what the suite's SMTP server received (conftest's `smtp_sink`)."""
from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from ops.demo.fake_gateway import FakeRazorpay
from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import DeadLetter, JobRun, OutboxEvent
from orders.models import Enrollment, Internship, Order
from payments.models import Payment
from tests.payments.conftest import WEBHOOK_SECRET

PRICE = 499900
# The customer emails, by their subjects (orders/templates/orders/email/*_subject.txt).
CONFIRMATION = re.compile(r"^You are enrolled: ")
EXPIRY = re.compile(r"^Your order \d+ has expired$")
# What the re-drive of effects not done in time reports in payment_sync's counts.
REDRIVE_COUNTS = ("enrollments_healed", "notifications_redriven", "emails_redriven", "outbox_relayed")


@pytest.fixture
def quiet_logs():
    """The SMTP server logs every line of every conversation and the webhook receiver every delivery:
    thousands of lines here, costing the test process time and hiding the figures."""
    loggers = [logging.getLogger(name) for name in ("mail.log", "payments.webhooks")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def received(sink, subject: re.Pattern) -> Counter:
    """How many messages whose subject matches each recipient got (from conftest's SmtpSink)."""
    return Counter(to.lower() for tos, text in list(sink.messages) if subject.search(text) for to in tos)


def worker_env(process_env: dict, fake: FakeRazorpay, sink, redis, **overrides: str) -> dict:
    """A worker's environment: the suite's Redis as broker, the fake gateway with a short client timeout,
    the suite's SMTP server, and effects re-driven when not done within seconds."""
    return {
        **process_env,
        "REDIS_URL": redis.url, "CELERY_BROKER_URL": redis.url,
        "RAZORPAY_KEY_ID": fake.key_id, "RAZORPAY_KEY_SECRET": fake.key_secret,
        "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "RAZORPAY_BASE_URL": fake.base_url,
        "RAZORPAY_TIMEOUT": "0.5", "RAZORPAY_RATE_LIMIT": "0",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(sink.port), "EMAIL_TIMEOUT": "5",
        "EFFECTS_REDRIVE_AFTER": "5",
        **overrides,
    }


# --- the population -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One kind of payment: how it stands at the gateway and here, and where it must end.

    `gateway` is the deciding attempt's status at Razorpay (None: the customer never paid);
    `expect` the local status it must reach; `paid` whether its order must end paid.
    """

    gateway: str | None
    expect: str
    paid: bool = False
    local: str = "created"
    on_capture: str = "capture"
    failed_first: bool = False  # an earlier attempt of the same Razorpay order failed
    authorized_twice: bool = False  # the customer paid twice: two attempts of the order authorized
    row: tuple[int, str] = (PRICE, "INR")  # our payment row's amount and currency
    order: tuple[int, str] = (PRICE, "INR")  # what the order asked the buyer to pay
    gateway_money: tuple[int, str] | None = None  # the gateway's, when it differs from the row's
    mismatch: bool = False
    expires: bool = False  # its order is left for order_cleanup to expire

    @property
    def asks_capture(self) -> bool:
        return self.gateway == "authorized" and not self.mismatch


KINDS = {
    "unpaid": Kind(None, "created"),
    "captured": Kind("captured", "captured", paid=True),
    "authorized": Kind("authorized", "captured", paid=True),
    "known_authorized": Kind("authorized", "captured", paid=True, local="authorized"),
    "failed": Kind("failed", "failed"),
    "retried": Kind("captured", "captured", paid=True, failed_first=True),
    # One of the two is captured, never both (the other is left to Razorpay's auto-refund).
    "paid_twice": Kind("authorized", "captured", paid=True, authorized_twice=True),
    "capture_refused": Kind("authorized", "failed", on_capture="refuse", expires=True),
    "capture_failed": Kind("authorized", "failed", on_capture="fail", expires=True),
    # The payment row agrees with the gateway, the order does not: what the buyer was asked differs.
    "order_amount": Kind("authorized", "created", row=(100, "INR"), mismatch=True),
    "order_currency": Kind("captured", "created", row=(PRICE, "USD"), mismatch=True),
    # The gateway disagrees with both.
    "gateway_amount": Kind("authorized", "created", gateway_money=(100, "INR"), mismatch=True),
    "gateway_currency": Kind("captured", "created", gateway_money=(PRICE, "USD"), mismatch=True),
}


@dataclass
class Case:
    kind: str
    payment_pk: int
    order_pk: int
    email: str
    gateway_payment_id: str | None  # the deciding attempt
    attempts: tuple[str, ...] = ()  # every attempt at the gateway


@dataclass
class Population:
    cases: list[Case] = field(default_factory=list)

    def of(self, *kinds: str) -> list[Case]:
        return [c for c in self.cases if c.kind in kinds]

    def where(self, **flags) -> list[Case]:
        return [c for c in self.cases if all(getattr(KINDS[c.kind], k) == v for k, v in flags.items())]

    def __len__(self) -> int:
        return len(self.cases)


def populate(fake: FakeRazorpay, counts: dict[str, int], *, now: datetime | None = None,
             age: timedelta = timedelta(hours=2), near_ttl: timedelta = timedelta(minutes=10),
             prefix: str = "f") -> Population:
    """Orders and payments of every kind in `counts`, mirrored at the fake (bulk inserts, no factories).

    Everything started `age` ago; the orders of kinds that end expirable started `near_ttl` short
    of ORDER_TTL, so that order_cleanup at a time just past it closes them and nothing else.
    """
    now = now or timezone.now()
    user_model = get_user_model()
    internship = Internship.objects.create(title="Backend internship", price_paise=PRICE, currency="INR")
    plan = [(kind, n) for kind, count in counts.items() for n in range(count)]
    users = user_model.objects.bulk_create([
        user_model(username=f"{prefix}{kind}{n}", email=f"{prefix}{kind}{n}@example.com") for kind, n in plan
    ])
    orders, payments, cases = [], [], []
    for (kind_name, _), user in zip(plan, users):
        kind = KINDS[kind_name]
        started = now - (settings.ORDER_TTL - near_ttl if kind.expires else age)
        orders.append(Order(user=user, internship=internship, amount_paise=kind.order[0], currency=kind.order[1],
                            created_at=started, updated_at=started))
    Order.objects.bulk_create(orders)
    for (kind_name, _), order in zip(plan, orders):
        kind = KINDS[kind_name]
        amount, currency = kind.row
        rzp_order = fake.add_order(amount=amount, currency=currency)["id"]
        attempts = []
        if kind.failed_first:
            attempts.append(fake.add_payment(order_id=rzp_order, status="failed")["id"])
        if kind.authorized_twice:
            attempts.append(fake.add_payment(order_id=rzp_order, status="authorized")["id"])
        deciding = None
        if kind.gateway:
            money = kind.gateway_money or kind.row
            deciding = fake.add_payment(order_id=rzp_order, status=kind.gateway, amount=money[0],
                                        currency=money[1], on_capture=kind.on_capture)["id"]
            attempts.append(deciding)
        updated = order.created_at
        payments.append(Payment(
            order=order, razorpay_order_id=rzp_order, amount_paise=amount, currency=currency, status=kind.local,
            razorpay_payment_id=deciding if kind.local != "created" else None,
            authorized_at=updated if kind.local == "authorized" else None,
            created_at=order.created_at, updated_at=updated,
        ))
        cases.append(Case(kind_name, 0, order.pk, order.user.email, deciding, tuple(attempts)))
    Payment.objects.bulk_create(payments)
    for case, payment in zip(cases, payments):
        case.payment_pk = payment.pk
    return Population(cases)


# --- running payment_sync on a worker -----------------------------------------------------------

@dataclass
class SyncRuns:
    """payment_sync runs sent to the workers as beat sends them, and what they counted."""

    concurrency: int = 8
    runs: list[dict] = field(default_factory=list)

    def send(self) -> str:
        """Queue a run; its task id, for `wait`."""
        return enqueue_job("payment_sync", trigger=JobRun.Trigger.BEAT, params={"concurrency": self.concurrency})

    def wait(self, task_id: str, timeout: float = 60.0) -> dict:
        result = AsyncResult(task_id).get(timeout=timeout, propagate=True)
        assert result["status"] == "success", f"payment_sync run {result['run_id']} ended {result['status']}"
        self.runs.append(result["counts"])
        return result["counts"]

    def run(self, timeout: float = 60.0) -> dict:
        return self.wait(self.send(), timeout)

    def until(self, done, *, every: float, max_runs: int, after_each=None) -> int | None:
        """Start a run every `every` seconds (never before the previous one ended) until `done()` holds;
        how many runs that took, or None if `max_runs` were not enough. `after_each()` checks each run."""
        for run in range(1, max_runs + 1):
            next_run = time.monotonic() + every
            self.run()
            if after_each is not None:
                after_each()
            finished = done()
            while not finished and time.monotonic() < next_run:
                time.sleep(0.5)
                finished = done()
            if finished:
                return run
        return None

    def total(self, key: str) -> int:
        return sum(int(counts.get(key, 0)) for counts in self.runs)


# --- invariants ---------------------------------------------------------------------------------

def wrong_money(fake: FakeRazorpay, population: Population) -> list[str]:
    """Paid orders not backed, at the gateway, by one capture of exactly their amount and currency; payments
    captured twice; payments captured though their money disagrees. Empty when the money is right."""
    problems = []
    expected_paid = {c.order_pk for c in population.where(paid=True)}
    paid = set(Order.objects.filter(status="paid").values_list("pk", flat=True))
    problems += [f"order {pk} paid, but the gateway never took its money" for pk in paid - expected_paid]
    backing = Payment.objects.filter(order__status="paid", status="captured", mismatch="").values_list(
        "order_id", "razorpay_payment_id", "order__amount_paise", "order__currency")
    backed = Counter()
    for order_id, payment_id, amount, currency in backing:
        backed[order_id] += 1
        at_gateway = fake.payment(payment_id)
        if (at_gateway["status"], at_gateway["amount"], at_gateway["currency"]) != ("captured", amount, currency):
            problems.append(f"order {order_id} ({amount} {currency}) paid by {payment_id}: "
                            f"{at_gateway['status']} {at_gateway['amount']} {at_gateway['currency']}")
    problems += [f"order {pk} paid with {backed[pk]} clean captured payments" for pk in paid if backed[pk] != 1]
    for case in population.cases:
        # Razorpay (and the fake) refuse a second capture of one payment; two attempts of one order
        # both captured is how a buyer would be charged twice.
        charged = {attempt: fake.captures(attempt) for attempt in case.attempts if fake.captures(attempt)}
        if sum(charged.values()) > 1:
            problems.append(f"order {case.order_pk} charged {sum(charged.values())} times: {charged}")
        if KINDS[case.kind].mismatch and KINDS[case.kind].gateway == "authorized" \
                and fake.captures(case.gateway_payment_id):
            problems.append(f"{case.gateway_payment_id} captured though its money disagrees")
    return problems


def not_converged(population: Population, sink) -> Counter:
    """What is not yet where it must end (an empty Counter once converged)."""
    left: Counter = Counter()
    rows = {r["pk"]: r for r in Payment.objects.filter(pk__in=[c.payment_pk for c in population.cases])
            .values("pk", "status", "mismatch", "error_code")}
    for case in population.cases:
        kind, row = KINDS[case.kind], rows[case.payment_pk]
        if row["status"] != kind.expect:
            left[f"{case.kind}: {row['status']}, not {kind.expect}"] += 1
        if bool(row["mismatch"]) != kind.mismatch:
            left[f"{case.kind}: mismatch {'missing' if kind.mismatch else 'flagged wrongly'}"] += 1
    paid = {c.order_pk for c in population.where(paid=True)}
    orders = dict(Order.objects.filter(pk__in=[c.order_pk for c in population.cases]).values_list("pk", "status"))
    left["orders not paid"] = sum(orders[pk] != "paid" for pk in paid)
    enrolled = set(Enrollment.objects.values_list("order_id", flat=True))
    left["enrollments missing"] = len(paid - enrolled)
    confirmations = received(sink, CONFIRMATION)
    left["confirmations missing"] = sum(not confirmations[c.email] for c in population.where(paid=True))
    return +left


def effects_exactly_once(population: Population, sink) -> list[str]:
    """An enrollment and exactly one confirmation email for each paid order, none for any other."""
    problems = []
    paid = {c.order_pk for c in population.where(paid=True)}
    enrolled = set(Enrollment.objects.values_list("order_id", flat=True))  # one per order: the schema says so
    if enrolled != paid:
        problems.append(f"{len(paid - enrolled)} paid orders without an enrollment, "
                        f"{len(enrolled - paid)} enrollments of orders not paid")
    confirmations = received(sink, CONFIRMATION)
    buyers = {c.email for c in population.where(paid=True)}
    problems += [f"{to} got {n} confirmations" for to, n in confirmations.items() if n > 1]
    problems += [f"{to} got a confirmation for an unpaid order" for to in set(confirmations) - buyers]
    problems += [f"{to} got no confirmation" for to in buyers - set(confirmations)]
    return problems


def captures(fake: FakeRazorpay, population: Population) -> int:
    """Captures the gateway applied, over every attempt of every order."""
    return sum(fake.captures(attempt) for case in population.cases for attempt in case.attempts)


def capture_chains(population: Population) -> Counter:
    """How many capture-retry chains each payment had: every `payment.authorized` event starts one."""
    ids = {c.payment_pk for c in population.cases}
    return Counter(
        p for p in OutboxEvent.objects.filter(topic="payment.authorized").values_list("payload__payment_id", flat=True)
        if p in ids
    )


def more_than_one(counts: Counter) -> dict:
    return {key: n for key, n in counts.items() if n > 1}


def gateway_figures(fake: FakeRazorpay) -> tuple[Counter, Counter]:
    """Calls by operation and faults by kind, from the fake's request log."""
    calls = fake.calls()
    return Counter(c["operation"] for c in calls), Counter(c["fault"] for c in calls if c["fault"])


def print_figures(title: str, figures: dict) -> None:
    print(f"\n{title}")
    for name, value in figures.items():
        print(f"  {name}: {value}")


def retries_logged(worker, error: str) -> int:
    """How many times the worker put a task back for a retry because of `error` (its log says each)."""
    return worker.log_path.read_text(errors="replace").count(f"will retry: {error}")


def dead_letters() -> Counter:
    return Counter(DeadLetter.objects.values_list("task_name", "state"))
