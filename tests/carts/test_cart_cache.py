"""Cart cache entries: written with the cart, removed with it, and kept for later when Redis is down."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from carts.models import Cart, CartStatus, PendingCacheDelete
from carts.services import cart_create, cart_touch
from carts.tasks import cache_cleanup
from checkout import redis as checkout_redis
from ops.runtime.models import DeadLetter, JobRun
from ops.runtime.runner import run_job

pytestmark = [pytest.mark.django_db, pytest.mark.postgres, pytest.mark.redis]

H = timedelta(hours=1)


@pytest.fixture
def redis_down(settings):
    """REDIS_URL pointing at a port nothing listens on, for as long as the test wants."""
    live_url = settings.REDIS_URL

    def switch(down: bool) -> None:
        settings.REDIS_URL = "redis://127.0.0.1:1/0" if down else live_url
        checkout_redis._client.cache_clear()

    yield switch
    switch(False)


def test_create_and_touch_write_the_cache_entry(internship, redis_client, django_capture_on_commit_callbacks, settings):
    with django_capture_on_commit_callbacks(execute=True):
        cart = cart_create(internship=internship)
    entry = json.loads(redis_client.get(cart.cache_key))
    assert entry["id"] == cart.pk and entry["status"] == "active"
    assert 0 < redis_client.ttl(cart.cache_key) <= settings.CART_TTL.total_seconds()

    # an abandoned cart the customer comes back to is active again
    Cart.objects.filter(pk=cart.pk).update(status=CartStatus.ABANDONED, abandoned_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert cart_touch(cart=cart)
    cart.refresh_from_db()
    assert cart.status == CartStatus.ACTIVE and cart.abandoned_at is None
    assert json.loads(redis_client.get(cart.cache_key))["updated_at"] == cart.updated_at.isoformat()


def test_touch_leaves_converted_and_deleted_carts_alone(make_cart):
    converted = make_cart(age=H, status=CartStatus.CONVERTED, converted_at=timezone.now())
    gone = make_cart(age=H)
    Cart.objects.filter(pk=gone.pk).delete()

    assert not cart_touch(cart=converted)
    assert not cart_touch(cart=gone)
    converted.refresh_from_db()
    assert converted.status == CartStatus.CONVERTED


# Committed for real: the run counts stored keys once their batch has committed.
@pytest.mark.django_db(transaction=True)
def test_redis_down_mid_run_keeps_keys_for_cache_cleanup(make_cart, redis_client, redis_down):
    # given expired carts with cache keys, and a cart that stays
    expired = [make_cart(age=30 * H) for _ in range(5)]
    kept = make_cart(age=H)

    # when Redis goes away before the cleanup runs
    redis_down(True)
    run = run_job("cart_cleanup", params={"batch_size": 2})

    # then the database work is done and every key that could not be removed is stored
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert run.counts["deleted"] == 5 and run.counts["cache_keys_stored"] == 5
    assert not Cart.objects.filter(pk__in=[c.pk for c in expired]).exists()
    assert set(PendingCacheDelete.objects.values_list("key", flat=True)) == {c.cache_key for c in expired}
    assert run.result["cache_keys_pending"] == 5
    # the cache_cleanup queued by the run (inline here) failed against the dead Redis and kept everything
    assert DeadLetter.objects.filter(task_name="cache_cleanup").exists()
    assert PendingCacheDelete.objects.count() == 5

    # when Redis is back and cache_cleanup runs
    redis_down(False)
    removed = cache_cleanup.apply().get()

    # then the stale keys are gone, the live one is untouched, and nothing is left pending
    assert removed == 5
    assert not any(redis_client.exists(c.cache_key) for c in expired)
    assert redis_client.exists(kept.cache_key)
    assert not PendingCacheDelete.objects.exists()


def test_next_run_flushes_stored_keys_first(make_cart, redis_client, redis_down):
    expired = make_cart(age=30 * H)
    redis_down(True)
    run_job("cart_cleanup")
    assert PendingCacheDelete.objects.count() == 1

    redis_down(False)
    run = run_job("cart_cleanup")

    assert run.counts["cache_keys_flushed"] == 1
    assert not redis_client.exists(expired.cache_key)
    assert not PendingCacheDelete.objects.exists()
    assert run.result["cache_keys_pending"] == 0


def test_task_names_are_stable():
    from checkout.celery import app

    router = app.amqp.router
    for name in ("cache_cleanup", "jobs.cart_cleanup"):
        assert name in app.tasks
        assert router.route({}, name)["queue"].name == "default"
