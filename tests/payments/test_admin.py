"""Payments in the admin: a mirror of the gateway that nobody adds, edits or deletes by hand, whatever is
posted, superusers included."""
import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from payments.models import Payment
from tests.factories import OrderFactory, PaymentFactory, UserFactory, staff_user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

PAYMENT_TIMES = ("created_at", "updated_at", "captured_at", "last_synced_at", "authorized_at", "refunded_at",
                 "claimed_until")
ALL_PAYMENT_PERMS = ("payments.view_payment", "payments.add_payment", "payments.change_payment",
                     "payments.delete_payment")


def payment_form(payment: Payment, **changes) -> dict:
    """The payment's change form as a browser would post it, every model field filled, with `changes`."""
    values = {
        "order": payment.order_id, "razorpay_order_id": payment.razorpay_order_id,
        "razorpay_payment_id": payment.razorpay_payment_id, "amount_paise": payment.amount_paise,
        "currency": payment.currency, "status": payment.status, "refunded_paise": payment.refunded_paise,
        "error_code": payment.error_code, "error_description": payment.error_description,
        "mismatch": payment.mismatch, **{name: getattr(payment, name) for name in PAYMENT_TIMES}, **changes,
    }
    data = {"_save": "Save"}
    for name, value in values.items():
        if name in PAYMENT_TIMES:
            local = timezone.localtime(value) if value else None
            data[f"{name}_0"] = f"{local:%Y-%m-%d}" if local else ""
            data[f"{name}_1"] = f"{local:%H:%M:%S}" if local else ""
        else:
            data[name] = "" if value is None else value
    return data


def _state(payment: Payment) -> tuple:
    fresh = Payment.objects.get(pk=payment.pk)
    return (fresh.status, fresh.amount_paise, fresh.currency, fresh.razorpay_order_id, fresh.razorpay_payment_id,
            fresh.captured_at, fresh.refunded_paise, fresh.refunded_at, fresh.mismatch)


@pytest.mark.parametrize("who", ["clerk with change_payment", "superuser"])
def test_a_posted_change_form_cannot_capture_refund_or_rename_a_payment(client, who):
    # given a payment still waiting at the gateway
    payment = PaymentFactory(order=OrderFactory(amount_paise=499900))
    before = _state(payment)
    if who == "superuser":
        user = UserFactory(username="root", is_staff=True, is_superuser=True)
    else:
        user = staff_user("clerk", "payments.view_payment", "payments.change_payment")
    client.force_login(user)
    url = reverse("admin:payments_payment_change", args=[payment.pk])

    # when the change form is posted directly: captured for 1 paisa under a made-up gateway id, half refunded
    response = client.post(url, payment_form(
        payment, status="captured", amount_paise=1, currency="USD", razorpay_payment_id="pay_forged0000001",
        razorpay_order_id="order_forged00001", captured_at=timezone.now(), refunded_paise=1,
        refunded_at=timezone.now(), mismatch="",
    ))

    # then it is refused and nothing moved; the page offers no field to edit
    assert response.status_code == 403
    assert _state(payment) == before
    assert not LogEntry.objects.exists()
    page = client.get(url).content.decode()
    assert 'name="status"' not in page and 'name="amount_paise"' not in page and 'name="_save"' not in page


def test_payments_are_neither_added_nor_deleted_by_hand(client):
    # given a captured payment and a clerk holding every payment permission
    payment = PaymentFactory(status="captured", razorpay_payment_id="pay_T000000001", captured_at=timezone.now())
    client.force_login(staff_user("clerk", *ALL_PAYMENT_PERMS))

    # when the clerk posts an add form, the delete page and the bulk delete action
    added = client.post(reverse("admin:payments_payment_add"), payment_form(
        PaymentFactory.build(order=payment.order, razorpay_order_id="order_forged00002", status="captured",
                             captured_at=timezone.now()),
    ))
    deleted = client.post(reverse("admin:payments_payment_delete", args=[payment.pk]), {"post": "yes"})
    bulk = client.post(reverse("admin:payments_payment_changelist"),
                       {"action": "delete_selected", "_selected_action": [payment.pk], "post": "yes"})

    # then each is refused: the one payment is still there, unchanged
    assert (added.status_code, deleted.status_code) == (403, 403)
    assert bulk.status_code == 200 and "delete_selected" not in bulk.content.decode()
    assert list(Payment.objects.values_list("pk", "status")) == [(payment.pk, "captured")]
    assert not LogEntry.objects.exists()


def test_a_viewer_reads_payments_and_their_reports(client):
    payment = PaymentFactory()
    client.force_login(staff_user("viewer", "payments.view_payment", "payments.view_paymentreport"))
    assert client.get(reverse("admin:payments_payment_changelist")).status_code == 200
    assert client.get(reverse("admin:payments_payment_change", args=[payment.pk])).status_code == 200
    assert client.get(reverse("admin:payments_paymentreport_changelist")).status_code == 200
