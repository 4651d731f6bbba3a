"""Alerts that page about what the jobs found: dependencies down too long, dead letters, payments needing a person.

Each is raised once per incident, with what to do next, and cleared once with a recovery notice.
"""
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from ops.maintenance.models import HealthCheck
from ops.runtime import alerts
from ops.runtime.alerts import Condition, alerts_evaluate, evaluate_rules
from ops.runtime.models import AlertIncident, DeadLetter
from payments.models import Payment
from tests.factories import PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def admins(settings):
    settings.ADMINS = [("ops", "ops@example.com")]
    settings.ALERT_BACKENDS = ["ops.runtime.alerts.LogBackend", "ops.runtime.alerts.EmailBackend"]
    settings.ALERT_DEPENDENCY_DOWN_AFTER = timedelta(minutes=30)


def _checks(service: str, *statuses_minutes_ago, now):
    for status, minutes in statuses_minutes_ago:
        HealthCheck.objects.create(service=service, status=status, checked_at=now - timedelta(minutes=minutes),
                                   detail={"reason": "unavailable"} if status == "down" else {})


def test_a_dependency_down_longer_than_the_threshold_pages_once_and_recovers_once():
    now = timezone.now()
    # given Razorpay answered an hour ago, and has been down for the 40 minutes since
    _checks("payment_gateway", ("ok", 60), ("down", 40), ("down", 20), ("down", 1), now=now)

    # when the rules are checked twice
    first = evaluate_rules(now)
    second = evaluate_rules(now + timedelta(minutes=5))

    # then one incident, one email that says what to do next
    assert first == {"dependency:payment_gateway": "opened"} and second == {}
    incident = AlertIncident.objects.get(job="dependency:payment_gateway", resolved_at__isnull=True)
    assert incident.summary.startswith("Razorpay down for 40 min") and "unavailable" in incident.summary
    assert len(mail.outbox) == 1
    assert "What to do next: check Razorpay's status page" in mail.outbox[0].body

    # when it answers again: resolved once, with a recovery notice
    _checks("payment_gateway", ("ok", -6), now=now)
    assert evaluate_rules(now + timedelta(minutes=7)) == {"dependency:payment_gateway": "resolved"}
    assert evaluate_rules(now + timedelta(minutes=8)) == {}
    assert len(mail.outbox) == 2
    assert "RECOVERED" in mail.outbox[1].subject


def test_a_short_outage_does_not_page():
    now = timezone.now()
    _checks("email_service", ("ok", 30), ("down", 10), now=now)
    _checks("cache", ("down", 29), now=now)  # down since its first check, still under the threshold
    assert evaluate_rules(now) == {}
    assert not mail.outbox


def test_dead_letters_over_the_threshold_page_and_clear_when_requeued(settings):
    settings.ALERT_DEAD_LETTERS = 3
    for n in range(3):
        DeadLetter.objects.create(task_name="email_send", task_id=f"t{n}", state=DeadLetter.State.DEAD,
                                  error="SMTPServerDisconnected")
    assert evaluate_rules() == {"dead_letters": "opened"}
    incident = AlertIncident.objects.get(job="dead_letters")
    assert incident.summary == "3 dead tasks wait in the dead letters (threshold 3)"
    assert "requeue" in incident.detail["next_step"]

    DeadLetter.objects.update(state=DeadLetter.State.REQUEUED)
    assert evaluate_rules() == {"dead_letters": "resolved"}


def test_mismatched_and_stuck_payments_page(settings):
    settings.ALERT_PAYMENT_STUCK_AFTER = timedelta(hours=6)
    now = timezone.now()
    mismatched = PaymentFactory(status=Payment.Status.AUTHORIZED, mismatch="gateway 100 USD, order 499900 INR")
    PaymentFactory(status=Payment.Status.AUTHORIZED, updated_at=now - timedelta(hours=7))
    PaymentFactory(status=Payment.Status.AUTHORIZED, updated_at=now - timedelta(hours=1))  # not yet stuck

    changes = evaluate_rules(now)

    assert changes == {"payments:mismatch": "opened", "payments:stuck": "opened"}
    stuck = AlertIncident.objects.get(job="payments:stuck")
    assert stuck.detail["by_status"] == {"authorized": 1}
    Payment.objects.filter(pk=mismatched.pk).update(mismatch="")
    assert evaluate_rules(now) == {"payments:mismatch": "resolved"}


def test_a_rule_that_cannot_be_checked_hides_no_other(monkeypatch):
    def broken(now):
        raise RuntimeError("table is locked")

    monkeypatch.setitem(alerts._RULES, "broken", alerts.AlertRule("broken", broken, "nothing"))
    monkeypatch.setitem(alerts._RULES, "always", alerts.AlertRule(
        "always", lambda now: Condition(True, "always tripped"), "read this"))

    assert evaluate_rules() == {"always": "opened"}


def test_the_periodic_evaluation_checks_the_rules_too():
    now = timezone.now()
    _checks("webhooks", ("down", 45), now=now)
    changes = alerts_evaluate(now)
    assert changes["dependency:webhooks"] == {"condition": "opened"}
    assert alerts_evaluate(now).get("dependency:webhooks") is None


def test_a_refund_the_gateway_never_answers_pages(settings):
    from payments.models import Refund

    settings.ALERT_PAYMENT_STUCK_AFTER = timedelta(hours=6)
    now = timezone.now()
    payment = PaymentFactory(status=Payment.Status.CAPTURED)
    refund = Refund.objects.create(payment=payment, amount_paise=100, currency="INR", idempotency_key="k" * 12,
                                   reason="customer asked", requested_by="alice",
                                   created_at=now - timedelta(hours=7), last_error="timed out")
    assert evaluate_rules(now) == {"payments:refund_stuck": "opened"}
    Refund.objects.filter(pk=refund.pk).update(status="processed", razorpay_refund_id="rfnd_1", processed_at=now)
    assert evaluate_rules(now) == {"payments:refund_stuck": "resolved"}
