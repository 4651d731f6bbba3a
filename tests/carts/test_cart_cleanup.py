"""cart_cleanup on PostgreSQL + Redis: boundaries, cache keys, statistics, re-runs, chunks, dry run."""
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.utils import timezone

from carts.models import Cart, CartDayTally, CartSnapshot, CartStatus
from carts.selectors import cart_counts_by_day, expired_where, next_batch_end
from carts.services import cart_expire_batch, cart_touch
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from tests.factories import CartFactory, InternshipFactory, OrderFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres, pytest.mark.redis]

H = timedelta(hours=1)
M = timedelta(minutes=1)


def _exists(cart) -> bool:
    return Cart.objects.filter(pk=cart.pk).exists()


def test_expiry_boundary_and_survivors(make_cart, redis_client):
    # given carts on each side of CART_TTL (24 h), and old carts that must stay
    expired = make_cart(age=24 * H + M)
    expired_abandoned = make_cart(age=30 * H, status=CartStatus.ABANDONED, abandoned_at=timezone.now() - 29 * H)
    young = make_cart(age=24 * H - M, idle=2 * M)
    old_but_in_use = make_cart(age=30 * H, idle=24 * H - M)
    converted = make_cart(age=30 * H, status=CartStatus.CONVERTED, converted_at=timezone.now() - 29 * H)
    ordered = make_cart(age=30 * H)
    OrderFactory(cart=ordered, internship=ordered.internship)

    # when
    run = run_job("cart_cleanup")

    # then
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert run.counts["deleted"] == 2
    for cart in (expired, expired_abandoned):
        assert not _exists(cart)
        assert not redis_client.exists(cart.cache_key)
    for cart in (young, old_but_in_use, converted, ordered):
        assert _exists(cart)
        assert redis_client.exists(cart.cache_key)


def test_abandon_boundary(make_cart):
    # given active carts on each side of CART_ABANDON_AFTER (1 h)
    idle = make_cart(age=3 * H, idle=H + M)
    busy = make_cart(age=3 * H, idle=H - M)
    converted = make_cart(age=3 * H, status=CartStatus.CONVERTED, converted_at=timezone.now() - 2 * H)
    before = timezone.now()

    # when
    run = run_job("cart_cleanup")

    # then
    assert run.counts["flagged_abandoned"] == 1
    idle.refresh_from_db(), busy.refresh_from_db(), converted.refresh_from_db()
    assert idle.status == CartStatus.ABANDONED and idle.abandoned_at >= before
    assert busy.status == CartStatus.ACTIVE and busy.abandoned_at is None
    assert converted.status == CartStatus.CONVERTED and converted.abandoned_at is None


def test_cart_touched_between_selection_and_delete_survives(make_cart):
    # given a batch of three expired carts chosen by the keyset step
    carts = [make_cart(age=30 * H) for _ in range(3)]
    cutoff = timezone.now() - 24 * H
    upto = next_batch_end(expired_where(cutoff), after_id=0, size=10)
    assert upto == carts[-1].pk

    # when a customer comes back to one of them before the DELETE runs
    assert cart_touch(cart=carts[1])
    with transaction.atomic():
        gone = cart_expire_batch(after_id=0, upto_id=upto, cutoff=cutoff)

    # then the DELETE's own condition keeps it
    assert {token for token, _ in gone} == {str(carts[0].token), str(carts[2].token)}
    assert _exists(carts[1]) and not _exists(carts[0]) and not _exists(carts[2])
    assert CartDayTally.objects.get().created_deleted == 2


def test_second_run_changes_nothing(make_cart, redis_client):
    for age, idle in ((30 * H, None), (30 * H, None), (5 * H, 2 * H), (2 * H, M)):
        make_cart(age=age, idle=idle)
    first = run_job("cart_cleanup")
    state = (
        sorted(Cart.objects.values_list("pk", "status", "updated_at", "abandoned_at")),
        sorted(CartDayTally.objects.values_list("day", "internship_id", "created_deleted", "abandoned_deleted")),
        sorted(redis_client.keys("cart:*")),
    )
    assert first.counts["deleted"] == 2 and first.counts["flagged_abandoned"] == 1

    second = run_job("cart_cleanup")

    assert second.counts["deleted"] == 0 and second.counts["flagged_abandoned"] == 0
    assert state == (
        sorted(Cart.objects.values_list("pk", "status", "updated_at", "abandoned_at")),
        sorted(CartDayTally.objects.values_list("day", "internship_id", "created_deleted", "abandoned_deleted")),
        sorted(redis_client.keys("cart:*")),
    )


def test_statistics_survive_deletion_on_local_days(settings, redis_client):
    # given carts created on known local dates in Kolkata (UTC+5:30)
    settings.CHECKOUT_TIME_ZONE = "Asia/Kolkata"
    kolkata = ZoneInfo("Asia/Kolkata")
    a, b = InternshipFactory(), InternshipFactory()
    day1 = timezone.now().astimezone(kolkata).date() - timedelta(days=10)
    day2 = day1 + timedelta(days=1)
    # 00:30 in Kolkata is still the previous day in UTC: the local date is what counts
    late = datetime.combine(day2, time(0, 30), tzinfo=kolkata)
    early = datetime.combine(day1, time(15, 30), tzinfo=kolkata)
    assert late.astimezone(dt_timezone.utc).date() == day1
    CartFactory(internship=a, user=None, created_at=late, updated_at=late)
    CartFactory(internship=a, user=None, created_at=early, updated_at=early,
                status=CartStatus.ABANDONED, abandoned_at=late)
    CartFactory(internship=b, user=None, created_at=early, updated_at=early,
                status=CartStatus.CONVERTED, converted_at=early + H)
    before = cart_counts_by_day(day1, day2 + timedelta(days=1))

    # when the cleanup deletes the two unconverted ones
    run = run_job("cart_cleanup")

    # then the counts by local day and internship are the same, now coming from the tallies
    assert run.counts["deleted"] == 2
    after = cart_counts_by_day(day1, day2 + timedelta(days=1))
    assert after == before == {
        day1: {
            a.pk: {"created": 1, "abandoned": 0, "converted": 0},
            b.pk: {"created": 1, "abandoned": 0, "converted": 1},
        },
        day2: {a.pk: {"created": 1, "abandoned": 1, "converted": 0}},
    }


def test_snapshot_matches_the_data(make_cart):
    other = InternshipFactory()
    make_cart(age=30 * H)
    make_cart(age=30 * H, internship=other)
    make_cart(age=30 * H, internship=other)
    make_cart(age=3 * H, idle=2 * H)
    make_cart(age=2 * H, idle=M, internship=other)
    make_cart(age=3 * H, status=CartStatus.CONVERTED, converted_at=timezone.now() - H)

    run = run_job("cart_cleanup")

    snapshot = CartSnapshot.objects.get(run=run)
    live = Counter(Cart.objects.values_list("status", flat=True))
    assert (snapshot.active, snapshot.abandoned, snapshot.converted) == (
        live["active"], live["abandoned"], live["converted"]
    ) == (1, 1, 1)
    assert (snapshot.deleted, snapshot.flagged, snapshot.cache_keys_pending) == (3, 1, 0)
    lines = {line.internship_id: line for line in snapshot.lines.all()}
    assert (lines[other.pk].deleted, lines[other.pk].active) == (2, 1)
    assert sum(line.deleted for line in lines.values()) == snapshot.deleted


def test_big_backlog_continues_in_chunks(make_cart, redis_client):
    # given more expired carts than one chunk's budget allows
    carts = [make_cart(age=30 * H) for _ in range(7)]
    idle = make_cart(age=3 * H, idle=2 * H)

    # when a run may do one batch of two carts (tasks run inline here, so the chunks follow at once)
    first = run_job("cart_cleanup", params={"batch_size": 2, "time_budget": 0})

    # then follow-up chunks resumed from the primary key reached, until nothing was left
    assert first.counts["deleted"] == 2
    chunks = list(JobRun.objects.filter(job="cart_cleanup", trigger=JobRun.Trigger.CONTINUATION).order_by("pk"))
    assert [c.status for c in chunks] == [JobRun.Status.SUCCESS] * len(chunks)
    assert chunks[0].params["after_id"] == carts[1].pk and chunks[0].params["chunk"] == 1
    assert sum(c.counts["deleted"] for c in chunks) == 5
    assert not Cart.objects.filter(pk__in=[c.pk for c in carts]).exists()
    assert redis_client.keys("cart:*") == [idle.cache_key.encode()]
    idle.refresh_from_db()
    assert idle.status == CartStatus.ABANDONED
    assert chunks[-1].result["finished"] is True


def test_dry_run_counts_and_writes_nothing(make_cart, redis_client):
    make_cart(age=30 * H)  # expired and idle: counted as deleted only
    make_cart(age=30 * H, idle=3 * H)  # old but used within CART_TTL: flagged, kept
    make_cart(age=3 * H, idle=2 * H)
    make_cart(age=H, idle=M)
    before = sorted(Cart.objects.values_list("pk", "status", "updated_at"))

    run = run_job("cart_cleanup", dry_run=True)

    assert run.status == JobRun.Status.SUCCESS
    assert run.result["would_delete"] == 1 and run.result["would_flag_abandoned"] == 2
    assert sorted(Cart.objects.values_list("pk", "status", "updated_at")) == before
    assert not CartDayTally.objects.exists() and not CartSnapshot.objects.exists()
    assert len(redis_client.keys("cart:*")) == 4


@pytest.mark.parametrize("params, message", [
    ({"batch_size": 0}, "batch_size must be between 1"),
    ({"batch_size": "big"}, "batch_size must be an integer"),
    ({"step": "everything"}, "step must be one of expire, abandon"),
    ({"colour": "red"}, "unknown parameter(s) for cart_cleanup: colour"),
])
def test_bad_parameters_fail_clearly_and_change_nothing(make_cart, params, message):
    cart = make_cart(age=30 * H)

    run = run_job("cart_cleanup", params=params)

    assert run.status == JobRun.Status.FAILED
    assert message in run.error and not run.traceback
    assert _exists(cart) and not CartSnapshot.objects.exists()


def test_counts_by_day_is_a_fixed_number_of_queries(django_assert_num_queries, internship):
    for n in range(5):
        CartFactory(internship=internship, user=None, created_at=timezone.now() - n * 24 * H)
    today = timezone.localdate()
    # one scan of the carts for the three events, one read of the deleted carts' tallies
    with django_assert_num_queries(2):
        counts = cart_counts_by_day(today - timedelta(days=30), today + timedelta(days=1))
    assert len(counts) == 31
    assert sum(c["created"] for day in counts.values() for c in day.values()) == 5


def test_counts_by_day_rejects_a_reversed_range():
    with pytest.raises(ValueError, match="is after end"):
        cart_counts_by_day(date(2031, 3, 2), date(2031, 3, 1))
    assert cart_counts_by_day(date(2031, 3, 1), date(2031, 3, 1)) == {}
