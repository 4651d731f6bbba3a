"""The orders app on its own: one enrollment per paid order, each notification and email sent once,
and the sweep that re-drives every effect not done in time."""
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from ops.runtime.models import OutboxEvent
from orders.models import Enrollment, OrderStatus, OutgoingEmail
from orders.services import (
    EMAIL_REDRIVE_MAX_ATTEMPTS,
    ENROLLMENT_CONFIRMATION,
    HEAL_AFTER,
    effects_redrive,
    email_send,
    enrollment_create,
    enrollment_heal_missing,
    notification_send,
)
from tests.factories import EnrollmentFactory, OrderFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def paid_order(**fields):
    return OrderFactory(**{"status": OrderStatus.PAID, "paid_at": timezone.now(), **fields})


def test_a_paid_order_gets_one_enrollment_however_often_it_is_asked():
    order = paid_order()

    first = enrollment_create(order_id=order.pk)
    again = enrollment_create(order_id=order.pk)

    assert first.pk == again.pk and Enrollment.objects.filter(order=order).count() == 1
    # the new enrollment is announced once, for its confirmation email
    assert list(OutboxEvent.objects.filter(topic="enrollment.created").values_list("key", flat=True)) == [
        f"enrollment.created:{first.pk}"
    ]


def test_an_unpaid_order_gets_no_enrollment():
    order = OrderFactory(status=OrderStatus.PENDING)
    assert enrollment_create(order_id=order.pk) is None
    assert not Enrollment.objects.exists()


def test_a_notification_queues_its_email_once():
    enrollment = EnrollmentFactory()

    outcomes = [notification_send(kind=ENROLLMENT_CONFIRMATION, object_id=enrollment.pk) for _ in range(2)]

    assert outcomes == ["queued", "already_sent"]
    email = OutgoingEmail.objects.get()
    assert email.to == enrollment.user.email and str(enrollment.order_id) in email.body
    assert OutboxEvent.objects.filter(topic="email.queued", key=f"email.queued:{email.pk}").count() == 1


def test_an_unknown_notification_is_refused():
    with pytest.raises(ValueError, match="unknown notification 'sms'"):
        notification_send(kind="sms", object_id=1)


def test_an_email_is_sent_once_and_marked_sent():
    enrollment = EnrollmentFactory()
    notification_send(kind=ENROLLMENT_CONFIRMATION, object_id=enrollment.pk)
    email = OutgoingEmail.objects.get()

    assert [email_send(email_id=email.pk) for _ in range(2)] == ["sent", "already_sent"]

    assert len(mail.outbox) == 1 and mail.outbox[0].to == [enrollment.user.email]
    email.refresh_from_db()
    assert email.sent_at is not None and email.claimed_until is None and email.attempts == 1


def test_paid_orders_without_an_enrollment_are_announced_again_after_the_grace():
    now = timezone.now()
    missing = paid_order(paid_at=now - HEAL_AFTER - timedelta(minutes=1))
    paid_order()  # too recent: its own event may still be on its way
    EnrollmentFactory(order=paid_order(paid_at=now - timedelta(days=1)))  # already enrolled

    assert enrollment_heal_missing(now=now, dry_run=True) == 1
    assert not OutboxEvent.objects.filter(topic="enrollment.missing").exists()
    assert enrollment_heal_missing(now=now) == 1

    event = OutboxEvent.objects.get(topic="enrollment.missing")
    assert event.payload == {"order_id": missing.pk}


def test_every_effect_not_done_in_time_is_redriven_until_done(settings, django_capture_on_commit_callbacks):
    # given effects whose messages were lost: a confirmation never queued, an expiry email never
    # queued, a stored email never sent (and their done twins, which stay alone)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    late = timezone.now() - HEAL_AFTER - timedelta(minutes=1)
    unconfirmed = EnrollmentFactory(created_at=late)
    EnrollmentFactory(created_at=late, confirmation_sent_at=late)
    expired = OrderFactory(status=OrderStatus.EXPIRED, expired_at=late)
    OrderFactory(status=OrderStatus.EXPIRED, expired_at=late, expiration_email_sent_at=late)
    unsent = OutgoingEmail.objects.create(key="k1", to="a@example.com", subject="s", body="b", created_at=late)
    OutgoingEmail.objects.create(key="k2", to="b@example.com", subject="s", body="b", created_at=late, sent_at=late)

    # when the sweep runs (its tasks run inline here once the outbox publishes)
    with django_capture_on_commit_callbacks(execute=True):
        counts = effects_redrive()

    # then each missing effect was re-driven once, and is now done
    assert counts == {"enrollments_healed": 0, "notifications_redriven": 2, "emails_redriven": 1}
    unconfirmed.refresh_from_db()
    expired.refresh_from_db()
    unsent.refresh_from_db()
    assert unconfirmed.confirmation_sent_at and expired.expiration_email_sent_at and unsent.sent_at
    assert len(mail.outbox) == 3  # the re-driven email, and the two notifications' emails
    # and a second sweep finds nothing left to do
    with django_capture_on_commit_callbacks(execute=True):
        assert effects_redrive() == {"enrollments_healed": 0, "notifications_redriven": 0, "emails_redriven": 0}


def test_an_email_that_keeps_failing_stops_being_redriven():
    late = timezone.now() - HEAL_AFTER - timedelta(minutes=1)
    OutgoingEmail.objects.create(key="k", to="a@example.com", subject="s", body="b", created_at=late,
                                 attempts=EMAIL_REDRIVE_MAX_ATTEMPTS)
    assert effects_redrive()["emails_redriven"] == 0
