"""seed_demo: sizes, every status, the schema's invariants, determinism, the cart cache, bad input, and
--reset: at once on a demo database, elsewhere only with the database's name typed, saying first what goes."""
import json
import re
import subprocess
import sys
from io import StringIO
from collections import Counter
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Count, F, Q

from carts.models import Cart
from ops.demo.data import SeedPlan, demo_data_reset, demo_data_seed
from ops.demo.data.database import _mark
from checkout.timezones import local_zone
from orders.models import Enrollment, Internship, Order
from payments.models import Payment
from tests.conftest import ROOT
from tests.factories import CartFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

NOW = datetime(2026, 3, 18, 9, 30, tzinfo=dt_timezone.utc)
PLAN = SeedPlan(carts=2000, orders=400, seed=7, days=60, internships=8)


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield NOW


def _snapshot():
    """Every seeded row as plain tuples, for comparing two runs."""
    return {
        "users": list(get_user_model().objects.order_by("id").values_list(
            "id", "username", "email", "password", "date_joined")),
        "internships": list(Internship.objects.order_by("id").values_list("id", "title", "price_paise")),
        "carts": list(Cart.objects.order_by("id").values_list(
            "id", "token", "user_id", "internship_id", "created_at", "updated_at", "status", "abandoned_at",
            "converted_at")),
        "orders": list(Order.objects.order_by("id").values_list(
            "id", "user_id", "internship_id", "cart_id", "amount_paise", "currency", "status", "created_at",
            "updated_at", "paid_at", "expired_at", "cancelled_at", "refunded_at", "expiration_email_sent_at")),
        "payments": list(Payment.objects.order_by("id").values_list(
            "id", "order_id", "razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status",
            "created_at", "updated_at", "captured_at", "refunded_paise", "error_code", "authorized_at",
            "refunded_at")),
        "enrollments": list(Enrollment.objects.order_by("id").values_list(
            "id", "order_id", "user_id", "internship_id", "created_at", "confirmation_sent_at")),
    }


def test_sizes_match_the_options_and_every_status_is_present(frozen):
    # when
    call_command("seed_demo", carts=2000, orders=400, seed=7, internships=8)

    # then
    assert Cart.objects.count() == 2000
    assert Order.objects.count() == 400
    assert Internship.objects.count() == 8
    assert get_user_model().objects.count() == 200  # one account per ten carts
    assert set(Cart.objects.values_list("status", flat=True)) == set(Cart.Status.values)
    assert set(Order.objects.values_list("status", flat=True)) == set(Order.Status.values)
    assert set(Payment.objects.values_list("status", flat=True)) == set(Payment.Status.values)
    assert Enrollment.objects.count() == Order.objects.filter(status="paid").count() > 0


def test_rows_keep_the_schema_invariants(frozen):
    demo_data_seed(plan=PLAN)
    now = frozen

    # paid orders: paid_at, one captured payment of the same amount in INR, an enrollment of the same buyer
    paid = Order.objects.filter(status="paid")
    assert not paid.filter(paid_at__isnull=True).exists()
    for order in paid.prefetch_related("payments").select_related("enrollment"):
        captured = [p for p in order.payments.all() if p.status == "captured"]
        assert len(captured) == 1
        assert (captured[0].amount_paise, captured[0].currency) == (order.amount_paise, "INR")
        assert captured[0].captured_at == order.paid_at
        assert captured[0].razorpay_payment_id
        assert (order.enrollment.user_id, order.enrollment.internship_id) == (order.user_id, order.internship_id)
        assert order.enrollment.created_at >= order.paid_at
    # a captured payment belongs to a paid order, a refunded one to a refunded order, in full
    assert set(Payment.objects.filter(status="captured").values_list("order__status", flat=True)) == {"paid"}
    assert set(Payment.objects.filter(status="refunded").values_list("order__status", flat=True)) == {"refunded"}
    refunded = Payment.objects.filter(status="refunded")
    assert not refunded.exclude(refunded_paise=F("amount_paise")).exists()
    assert not refunded.filter(Q(refunded_at__isnull=True) | Q(authorized_at__isnull=True)).exists()
    assert not Payment.objects.filter(status__in=["authorized", "captured"], authorized_at__isnull=True).exists()
    # every payment charges its order's amount; no payment for a settled order is left unsettled
    assert not Payment.objects.exclude(amount_paise=F("order__amount_paise")).exists()
    assert not Payment.objects.filter(status__in=["created", "authorized"]).exclude(order__status="pending").exists()
    assert not Enrollment.objects.exclude(order__status="paid").exists()
    # amounts are the internship's price
    assert not Order.objects.exclude(amount_paise=F("internship__price_paise")).exists()
    # converted carts have their order, created at conversion; other carts have none
    converted = Cart.objects.filter(status="converted")
    assert converted.filter(orders__isnull=True).count() == 0
    assert not Order.objects.filter(cart__isnull=False).exclude(cart__status="converted").exists()
    assert not Order.objects.filter(cart__isnull=False).exclude(created_at=F("cart__converted_at")).exists()
    assert not Cart.objects.filter(status="abandoned", abandoned_at__isnull=True).exists()
    assert not Order.objects.filter(status="expired").filter(Q(expired_at__isnull=True)).exists()
    # Razorpay's id shapes, unique
    order_ids = list(Payment.objects.values_list("razorpay_order_id", flat=True))
    payment_ids = list(Payment.objects.exclude(razorpay_payment_id=None).values_list("razorpay_payment_id", flat=True))
    assert all(re.fullmatch(r"order_[0-9A-Za-z]{14}", i) for i in order_ids)
    assert all(re.fullmatch(r"pay_[0-9A-Za-z]{14}", i) for i in payment_ids)
    assert len(set(order_ids)) == len(order_ids) and len(set(payment_ids)) == len(payment_ids)
    # nothing in the future, nothing before the window
    for model, fields in ((Cart, ["created_at", "updated_at", "abandoned_at", "converted_at"]),
                          (Order, ["created_at", "updated_at", "paid_at", "expired_at", "refunded_at"]),
                          (Payment, ["created_at", "updated_at", "captured_at"])):
        for name in fields:
            assert not model.objects.filter(**{f"{name}__gt": now}).exists(), (model, name)
    assert not Cart.objects.filter(created_at__lt=now - timedelta(days=61)).exists()


def test_every_job_finds_work(frozen):
    demo_data_seed(plan=PLAN)
    now = frozen

    # cart_cleanup: old never-converted carts to delete, idle active carts to flag
    assert Cart.objects.exclude(status="converted").filter(created_at__lt=now - settings.CART_TTL).exists()
    assert Cart.objects.filter(status="active", updated_at__lt=now - settings.CART_ABANDON_AFTER).exists()
    # order_cleanup: pending orders past ORDER_TTL
    assert Order.objects.filter(status="pending", created_at__lt=now - settings.ORDER_TTL).exists()
    # payment_sync: unsettled payments older than PAYMENT_SYNC_AFTER
    stale = Payment.objects.filter(updated_at__lt=now - settings.PAYMENT_SYNC_AFTER)
    assert stale.filter(status="created").exists() and stale.filter(status="authorized").exists()


def test_daily_volumes_follow_a_weekday_pattern(frozen):
    demo_data_seed(plan=SeedPlan(carts=20000, orders=4000, seed=3, days=28))
    zone = local_zone()
    per_day = Counter(c.astimezone(zone).date() for c in Cart.objects.values_list("created_at", flat=True))
    full_days = [n for day, n in per_day.items() if day != NOW.astimezone(zone).date()]
    assert len(per_day) == 28
    weekend = [n for day, n in per_day.items() if day.weekday() >= 5]
    weekday = [n for day, n in per_day.items() if day.weekday() < 5 and day != NOW.astimezone(zone).date()]
    assert sum(weekend) / len(weekend) < 0.85 * sum(weekday) / len(weekday)
    assert max(full_days) > 1.3 * min(full_days)


def test_same_seed_same_rows_and_both_loaders_agree(frozen):
    # given a first run, loaded with COPY
    demo_data_seed(plan=PLAN, method="copy", warm_cache=False)
    first = _snapshot()
    demo_data_reset()

    # when the same plan is loaded again, with bulk_create this time
    demo_data_seed(plan=PLAN, method="bulk_create", warm_cache=False)

    # then
    assert _snapshot() == first
    demo_data_reset()
    demo_data_seed(plan=SeedPlan(carts=2000, orders=400, seed=8, internships=8), warm_cache=False)
    assert _snapshot()["carts"] != first["carts"]


def test_seeding_twice_appends_with_fresh_ids_and_sequences_follow(frozen):
    # given
    small = SeedPlan(carts=300, orders=60, seed=1)
    demo_data_seed(plan=small, warm_cache=False)

    # when the same seed runs again on top
    demo_data_seed(plan=small, warm_cache=False)

    # then ids, tokens and Razorpay ids do not collide, and ordinary inserts still get fresh ids
    assert Cart.objects.count() == 600
    assert Payment.objects.values("razorpay_order_id").distinct().count() == Payment.objects.count()
    cart = CartFactory()
    assert cart.pk > Cart.objects.exclude(pk=cart.pk).order_by("-pk").values_list("pk", flat=True)[0]
    assert Order.objects.annotate(n=Count("enrollment")).filter(status="paid", n=0).count() == 0


@pytest.mark.redis
def test_live_carts_are_cached_in_redis_with_their_remaining_ttl(frozen, redis_client):
    # when
    result = demo_data_seed(plan=PLAN)

    # then a key per active cart younger than CART_TTL, and none for the others
    live = Cart.objects.filter(status="active", created_at__gt=frozen - settings.CART_TTL)
    assert result.cache_entries == live.count() > 0
    keys = {k.decode() for k in redis_client.scan_iter(match="cart:*", count=1000)}
    assert keys == {f"cart:{token}" for token in live.values_list("token", flat=True)}
    cart = live.first()
    ttl = redis_client.ttl(f"cart:{cart.token}")
    expected = (cart.created_at + settings.CART_TTL - frozen).total_seconds()
    assert expected - 5 <= ttl <= expected
    entry = json.loads(redis_client.get(f"cart:{cart.token}"))
    assert entry["id"] == cart.pk and entry["status"] == "active"

    # and a reset removes them with the rows
    demo_data_reset()
    assert not list(redis_client.scan_iter(match="cart:*"))
    assert not Cart.objects.exists()


def test_bad_sizes_change_nothing():
    for bad in ({"carts": -5}, {"orders": -1}, {"days": 0}, {"internships": 0}):
        with pytest.raises(CommandError) as raised:
            call_command("seed_demo", **bad)
        assert raised.value.returncode == 2
    assert not Cart.objects.exists() and not Internship.objects.exists()


def test_negative_carts_on_the_command_line_is_one_line_and_exit_2(process_env):
    done = subprocess.run(
        [sys.executable, "manage.py", "seed_demo", "--carts", "-5"],
        cwd=ROOT, env=process_env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--carts must be between 0" in done.stderr
    assert done.stdout == ""


SMALL = SeedPlan(carts=300, orders=60, seed=3, days=10, internships=4)


def _reset(**options):
    out = StringIO()
    call_command("seed_demo", reset=True, carts=0, orders=0, internships=1, stdout=out, **options)
    return out.getvalue()


def test_reset_refuses_a_database_the_demo_did_not_make_and_says_what_it_would_delete(frozen):
    # given data in a database with no demo marker
    demo_data_seed(plan=SMALL, warm_cache=False)
    orders, payments = Order.objects.count(), Payment.objects.count()
    database = connection.settings_dict["NAME"]

    # when
    with pytest.raises(CommandError) as refused:
        _reset()

    # then one line names every table it would empty, with its rows, and nothing is deleted
    message = str(refused.value)
    print(message)
    assert refused.value.returncode == 2 and "\n" not in message
    assert message.startswith("--reset would delete ")
    for table, rows in (("order", orders), ("payment", payments), ("cart", 300), ("internship", 4)):
        assert re.search(rf"\b{rows} {table}\b", message), table
    assert message.endswith(f"to do it anyway add --yes-destroy {database}")
    assert (Order.objects.count(), Payment.objects.count(), Cart.objects.count()) == (orders, payments, 300)

    # and a wrong name is refused too
    with pytest.raises(CommandError, match="is not the name of the database"):
        _reset(yes_destroy=database + "_other")
    assert Order.objects.count() == orders


def test_reset_with_the_database_name_typed_says_what_goes_and_deletes_it(frozen):
    # given
    demo_data_seed(plan=SMALL, warm_cache=False)
    orders = Order.objects.count()

    # when
    out = _reset(yes_destroy=connection.settings_dict["NAME"])

    # then it said what it was deleting, then deleted it
    deleting, removed = out.splitlines()[:2]
    assert deleting.startswith("reset: deleting ") and f"{orders} order," in deleting
    assert removed.startswith("reset: removed ") and f"{orders} order," in removed
    assert not Order.objects.exists() and not Cart.objects.exists() and Internship.objects.count() == 1


def test_reset_of_a_demo_database_or_of_an_empty_one_needs_no_name(frozen):
    # given nothing to delete: no refusal
    _reset()

    # given data in a database the demo marked (the test's transaction takes the marker away again)
    demo_data_seed(plan=SMALL, warm_cache=False)
    _mark()

    # when
    _reset()

    # then
    assert not Order.objects.exists() and not Cart.objects.exists()
