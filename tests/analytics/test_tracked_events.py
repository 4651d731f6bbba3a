"""Counts the apps announce through the outbox, counted once per batch into the figures the reports read."""
import json
from datetime import date, timedelta

import pytest
import time_machine
from django.db import IntegrityError, OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext

import analytics.tasks
import carts.services
from analytics.models import DailyCounter, DailyReport, TrackReceipt, WeeklyReport
from analytics.services import counters_track, daily_reports_build, weekly_report_build
from analytics.tasks import analytics_track
from carts.models import Cart
from carts.selectors import expired_where, next_batch_end
from ops.runtime.models import DeadLetter, JobRun, OutboxEvent
from ops.runtime.outbox import outbox_relay
from ops.runtime.runner import run_job
from orders.models import Order
from payments.models import Payment
from payments.services.order_cleanup import order_cleanup_overdue
from payments.services.state import GatewayPayment, payment_apply_observations
from tests.analytics.conftest import local
from tests.factories import CartFactory, InternshipFactory, OrderFactory, PaymentFactory
from tests.payments.conftest import fake_gateway  # noqa: F401  (the fixture, shared)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

H = timedelta(hours=1)
DAY = date(2024, 6, 10)
# 00:30 in Kolkata is still the day before in UTC: the local day is the one that counts.
AT = local(DAY, 0, 30, zone="Asia/Kolkata")
EXPIRED_AGES = (25 * H, 30 * H, 48 * H, 72 * H, 100 * H)


@pytest.fixture(autouse=True)
def kolkata(settings):
    settings.CHECKOUT_TIME_ZONE = "Asia/Kolkata"


def counters(subject: str, day: date = DAY) -> dict[str, int]:
    return dict(DailyCounter.objects.filter(subject=subject, day=day).values_list("name", "value"))


def events(topic: str) -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(topic=topic).order_by("pk"))


def assert_plain(event: OutboxEvent, *, subject: str) -> None:
    payload = event.payload
    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {"key", "day", "subject", "counters"}
    assert payload["key"] == event.key and payload["subject"] == subject and payload["day"] == DAY.isoformat()
    assert all(type(value) is int for value in payload["counters"].values())
    assert event.published_at is not None


@pytest.fixture
def expired_carts(redis_client):
    """Five carts past CART_TTL at AT, one young cart and one old cart with an order (both stay)."""
    internship = InternshipFactory()
    gone = [CartFactory(internship=internship, user=None, created_at=AT - age) for age in EXPIRED_AGES]
    CartFactory(internship=internship, user=None, created_at=AT - 2 * H)
    ordered = CartFactory(internship=internship, user=None, created_at=AT - 50 * H)
    OrderFactory(cart=ordered, internship=internship, created_at=AT - H)
    return gone


def test_each_cart_cleanup_batch_announces_its_carts_and_their_age_on_the_local_day(
        expired_carts, django_capture_on_commit_callbacks):
    # when cart_cleanup deletes them two by two
    with time_machine.travel(AT, tick=False), django_capture_on_commit_callbacks(execute=True):
        run = run_job("cart_cleanup", params={"batch_size": 2})

    # then each of the three batches announced itself once, published and counted
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert run.counts["deleted"] == 5 and Cart.objects.count() == 2
    announced = events("carts.expired.tally")
    assert [e.payload["counters"]["expired"] for e in announced] == [2, 2, 1]
    assert len({e.key for e in announced}) == 3
    for event in announced:
        assert_plain(event, subject="carts")
    age_sum = int(sum(EXPIRED_AGES, timedelta()).total_seconds())
    assert counters("carts") == {"expired": 5, "expired_age_seconds": age_sum}
    assert TrackReceipt.objects.count() == 3

    # and the report of that local day carries them, with the average age derived
    built = daily_reports_build(start=DAY, end=DAY + timedelta(days=1))
    report = DailyReport.objects.get(date=DAY)
    assert report.tracked == {"carts": {"expired": 5, "expired_age_seconds": age_sum}}
    assert built[0]["average_expired_cart_age_seconds"] == round(age_sum / 5) == 55 * 3600


def test_a_batch_rolled_back_announces_nothing_and_its_redo_announces_once(
        expired_carts, monkeypatch, django_capture_on_commit_callbacks):
    # given a batch refused by a conflict after its DELETE and announcement (an order
    # committed since its snapshot): the runtime rolls it back and runs it again
    real = carts.services.cart_expire_batch
    attempts = []

    def conflicting(**kwargs):
        gone = real(**kwargs)
        attempts.append(len(gone))
        if len(attempts) == 1:
            raise IntegrityError("insert or update on table violates foreign key constraint")
        return gone

    monkeypatch.setattr(carts.services, "cart_expire_batch", conflicting)

    # when
    with time_machine.travel(AT, tick=False), django_capture_on_commit_callbacks(execute=True):
        progress = carts.services.cart_purge_expired(cutoff=AT - 24 * H)
        outbox_relay()  # what cart_cleanup asks for once its batches are done

    # then the carts were deleted and announced by the redo alone
    assert attempts == [5, 5] and progress.rows == 5
    (announced,) = events("carts.expired.tally")
    assert announced.payload["counters"]["expired"] == 5
    assert counters("carts")["expired"] == 5


def test_a_batch_with_nothing_left_to_delete_announces_nothing(expired_carts, django_capture_on_commit_callbacks):
    # given a batch chosen, then every cart of it back in use before the DELETE
    cutoff = AT - 24 * H
    upto = next_batch_end(expired_where(cutoff), after_id=0, size=10)
    Cart.objects.update(updated_at=AT)

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        gone = carts.services.cart_expire_batch(after_id=0, upto_id=upto, cutoff=cutoff)

    assert gone == [] and Cart.objects.count() == 7
    assert not events("carts.expired.tally") and not DailyCounter.objects.exists()


def test_a_redelivered_announcement_counts_once(expired_carts, django_capture_on_commit_callbacks):
    with time_machine.travel(AT, tick=False), django_capture_on_commit_callbacks(execute=True):
        carts.services.cart_purge_expired(cutoff=AT - 24 * H)
        outbox_relay()
    before = counters("carts")

    # when the relay sends the event again (published, then the mark lost)
    OutboxEvent.objects.update(published_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_relay() == 1

    # then the consumer's receipt keeps the count as it was
    assert counters("carts") == before and before["expired"] == 5
    assert TrackReceipt.objects.count() == 1


def test_order_cleanup_announces_expired_and_orphaned_orders_per_batch(
        fake_gateway, django_capture_on_commit_callbacks):  # noqa: F811
    # given three overdue orders whose payment failed (they expire) and two never paid for (orphans)
    overdue = AT - 49 * H
    for _ in range(3):
        PaymentFactory(order=OrderFactory(created_at=overdue), status="failed", created_at=overdue)
    orphans = [OrderFactory(created_at=overdue) for _ in range(2)]

    # when they are closed two by two
    with django_capture_on_commit_callbacks(execute=True):
        counts = order_cleanup_overdue(now=AT, batch_size=2)

    # then one announcement per batch, counted on the local day of the closing
    assert (counts["orders_expired"], counts["orders_cancelled_orphaned"]) == (3, 2)
    announced = events("orders.closed.tally")
    assert len(announced) == 3 and len({e.key for e in announced}) == 3
    for event in announced:
        assert_plain(event, subject="orders")
    assert counters("orders") == {"expired": 3, "cancelled_orphaned": 2}
    assert Order.objects.filter(pk__in=[o.pk for o in orphans], status="cancelled").count() == 2

    # and a second run closes nothing and announces nothing
    with django_capture_on_commit_callbacks(execute=True):
        order_cleanup_overdue(now=AT + H, batch_size=2)
    assert len(events("orders.closed.tally")) == 3


def test_failed_payments_are_announced_once_per_applied_group(django_capture_on_commit_callbacks):
    # given three payments started at the gateway, which says they failed
    payments = [PaymentFactory(created_at=AT - H) for _ in range(3)]
    observations = [
        (p.pk, GatewayPayment(id=f"pay_F{n}", status="failed", amount=p.amount_paise, currency=p.currency,
                              error_code="BAD_REQUEST_ERROR"))
        for n, p in enumerate(payments)
    ]

    # when the answer is applied, then applied again (a later sync, a webhook)
    with django_capture_on_commit_callbacks(execute=True):
        applied = payment_apply_observations(observations=observations, now=AT)
        payment_apply_observations(observations=observations, now=AT + H)

    # then
    assert applied.counts["failed"] == 3
    assert set(Payment.objects.values_list("status", flat=True)) == {"failed"}
    (announced,) = events("payments.failed.tally")
    assert_plain(announced, subject="payments")
    assert announced.key == f"payments.failed:{min(p.pk for p in payments)}"
    assert counters("payments") == {"failed": 3}


def test_a_rolled_back_change_announces_nothing(django_capture_on_commit_callbacks):
    payment = PaymentFactory(created_at=AT - H)
    observation = GatewayPayment(id="pay_R", status="failed", amount=payment.amount_paise, currency=payment.currency)

    class Abort(Exception):
        pass

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(Abort):
        with transaction.atomic():
            payment_apply_observations(observations=[(payment.pk, observation)], now=AT)
            raise Abort

    assert not events("payments.failed.tally") and not DailyCounter.objects.exists()
    assert Payment.objects.get(pk=payment.pk).status == "created"


def test_daily_reports_read_the_tracked_counters_with_one_query_per_chunk():
    # given counters on 40 local days (two rounds of BACKFILL_CHUNK_DAYS)
    first = date(2024, 4, 1)
    for n in range(40):
        counters_track(key=f"c{n}", day=first + timedelta(days=n), subject="carts",
                       counters={"expired": 2, "expired_age_seconds": 7200 * (n + 1)})
    counters_track(key="p", day=first, subject="payments", counters={"failed": 1})

    # when
    with CaptureQueriesContext(connection) as queries:
        built = daily_reports_build(start=first, end=first + timedelta(days=41))

    # then
    reads = [q for q in queries.captured_queries
             if "analytics_dailycounter" in q["sql"] and q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2
    reports = {r.date: r for r in DailyReport.objects.all()}
    assert reports[first].tracked == {
        "carts": {"expired": 2, "expired_age_seconds": 7200}, "payments": {"failed": 1},
    }
    assert reports[first + timedelta(days=39)].tracked == {"carts": {"expired": 2, "expired_age_seconds": 288000}}
    assert reports[first + timedelta(days=40)].tracked == {}
    assert [day["average_expired_cart_age_seconds"] for day in built[:2]] == [3600, 7200]
    assert built[-1]["average_expired_cart_age_seconds"] is None


def test_the_weekly_report_sums_the_tracked_counters_of_its_days():
    week_start = date(2024, 6, 2)
    for n, day in enumerate((week_start - timedelta(days=1), week_start, week_start + timedelta(days=6),
                             week_start + timedelta(days=7))):
        counters_track(key=f"w{n}", day=day, subject="carts", counters={"expired": 1, "expired_age_seconds": 100})
    counters_track(key="o", day=week_start, subject="orders", counters={"expired": 4, "cancelled_orphaned": 1})

    result = weekly_report_build(week_start=week_start)

    report = WeeklyReport.objects.get()
    assert report.tracked == {
        "carts": {"expired": 2, "expired_age_seconds": 200},
        "orders": {"cancelled_orphaned": 1, "expired": 4},
    }
    assert result["average_expired_cart_age_seconds"] == 100


@pytest.mark.parametrize("bad", [{"expired": 1.5}, {"expired": "3"}, {"": 1}, {"expired": True}])
def test_bad_counters_are_refused_without_retries(bad):
    result = analytics_track.apply_async(kwargs={"key": "bad", "day": DAY.isoformat(), "subject": "carts",
                                                 "counters": bad})

    assert result.failed()
    letter = DeadLetter.objects.get()
    assert letter.state == DeadLetter.State.DEAD and letter.attempts == 1 and "ValueError" in letter.error
    assert not DailyCounter.objects.exists() and not TrackReceipt.objects.exists()


def test_a_database_error_in_the_consumer_is_retried_and_counts_once(monkeypatch):
    real = analytics.tasks.counters_track
    calls = []

    def flaky(**kwargs):
        calls.append(kwargs["key"])
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(analytics.tasks, "counters_track", flaky)

    # when: eager mode runs the task and its retry inline
    analytics_track.apply_async(kwargs={"key": "k", "day": DAY.isoformat(), "subject": "carts",
                                        "counters": {"expired": 3}})

    # then
    assert calls == ["k", "k"]
    assert counters("carts") == {"expired": 3}
    assert DeadLetter.objects.get().state == DeadLetter.State.RECOVERED
