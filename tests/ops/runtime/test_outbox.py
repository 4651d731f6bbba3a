"""The outbox publishes after commit, never for a rolled-back change, once per key, in batches."""
import pytest
from django.db import transaction

from ops.runtime.models import OutboxEvent
from ops.runtime.outbox import outbox_add, outbox_add_many, outbox_relay, subscribe
from ops.runtime.tasks import background_task

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

RECEIVED: list[dict] = []


@background_task("ops_test.outbox_sink", queue="default", max_retries=0)
def outbox_sink(**payload):
    RECEIVED.append(payload)


subscribe("tests.happened", "ops_test.outbox_sink")


@pytest.fixture(autouse=True)
def _clear():
    RECEIVED.clear()


def test_event_is_published_only_after_commit(django_capture_on_commit_callbacks):
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            event_id = outbox_add("tests.happened", {"n": 1})
    # then: nothing was sent inside the transaction
    assert RECEIVED == []
    assert OutboxEvent.objects.get(pk=event_id).published_at is None
    # when the commit callbacks run
    for callback in callbacks:
        callback()
    # then: sent once, marked published
    assert RECEIVED == [{"n": 1}]
    assert OutboxEvent.objects.get(pk=event_id).published_at is not None


def test_rolled_back_change_publishes_nothing(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            outbox_add("tests.happened", {"n": 2})
            raise RuntimeError("the change failed")
    assert RECEIVED == []
    assert not OutboxEvent.objects.exists()


def test_same_key_is_stored_and_sent_once(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            first = outbox_add("tests.happened", {"n": 3}, key="fact:3")
            second = outbox_add("tests.happened", {"n": 3}, key="fact:3")
    assert first is not None and second is None
    assert OutboxEvent.objects.filter(key="fact:3").count() == 1
    assert RECEIVED == [{"n": 3}]


def test_many_events_of_one_transaction_go_out_in_one_batch(django_capture_on_commit_callbacks, django_assert_max_num_queries):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            for n in range(50):
                outbox_add("tests.happened", {"n": n})
    # one SELECT … FOR UPDATE and one UPDATE for all fifty (plus the savepoint pair)
    with django_assert_max_num_queries(4):
        for callback in callbacks:
            callback()
    assert sorted(p["n"] for p in RECEIVED) == list(range(50))
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()


def test_relay_sends_what_was_left_unpublished():
    # given events whose publication after commit never happened (a crash, a broker outage)
    with transaction.atomic():
        ids = [outbox_add("tests.happened", {"n": n}) for n in range(3)]
    OutboxEvent.objects.filter(pk__in=ids).update(published_at=None)
    RECEIVED.clear()
    # when
    assert outbox_relay() == 3
    # then: sent once each; a second relay finds nothing
    assert sorted(p["n"] for p in RECEIVED) == [0, 1, 2]
    assert outbox_relay() == 0


def test_add_many_stores_new_events_in_one_statement_and_skips_known_keys(
        django_capture_on_commit_callbacks, django_assert_num_queries):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        outbox_add("tests.happened", {"n": 0}, key="many:0")
    RECEIVED.clear()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            with django_assert_num_queries(1):
                ids = outbox_add_many(("tests.happened", {"n": n}, f"many:{n}") for n in range(4))
    assert len(ids) == 3
    assert sorted(OutboxEvent.objects.filter(key__startswith="many:").values_list("key", flat=True)) == [
        "many:0", "many:1", "many:2", "many:3",
    ]
    assert sorted(p["n"] for p in RECEIVED) == [1, 2, 3]


@pytest.mark.redis
def test_a_bulk_change_hands_its_events_to_the_relay_with_one_message(
        django_capture_on_commit_callbacks, celery_live, redis_client):
    from ops.runtime.outbox import DIRECT_PUBLISH_MAX

    # when one transaction announces more events than are sent directly
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            outbox_add_many(("tests.happened", {"n": n}, None) for n in range(DIRECT_PUBLISH_MAX + 1))
    # then one message (the relay task) is queued, not one per event, and the events wait for it
    assert redis_client.llen("default") == 1
    assert OutboxEvent.objects.filter(published_at__isnull=True).count() == DIRECT_PUBLISH_MAX + 1
    # when the relay runs (on a worker; here, in this process)
    celery_live.conf.task_always_eager = True
    assert outbox_relay() == DIRECT_PUBLISH_MAX + 1
    assert sorted(p["n"] for p in RECEIVED) == list(range(DIRECT_PUBLISH_MAX + 1))
