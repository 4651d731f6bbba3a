"""The admin's money actions, against the fake Razorpay with the real SDK: refund a captured payment and
resolve a payment flagged as a mismatch, each behind its permission, with a confirmation page, an
idempotency token (a double submit refunds once), the gateway's errors shown as one message, and an audit
entry with the user."""
import html
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.core import mail
from django.urls import reverse

from ops.runtime.alerts import evaluate_rules
from ops.runtime.models import AlertIncident
from orders.models import Enrollment, Order, OrderStatus
from payments.admin import paise_from_rupees
from payments.models import Payment, Refund
from payments.services.settle import payment_sync_pending
from tests.factories import PaymentFactory, staff_user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

AMOUNT = 499900
VIEW = "payments.view_payment"
REFUND = "payments.refund_payment"
RESOLVE = "payments.resolve_mismatch"


@pytest.fixture
def captured(make_payment, django_capture_on_commit_callbacks):
    """A payment captured at the gateway and synced: its order paid, the buyer enrolled and told."""
    payment, pay_id = make_payment(at_gateway="captured", amount=AMOUNT)
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_sync_pending()["orders_paid"] == 1
    payment.refresh_from_db()
    assert Enrollment.objects.filter(order_id=payment.order_id).exists()
    mail.outbox.clear()
    return payment, pay_id


@pytest.fixture
def flagged(make_payment, fake_gateway):
    """make(gateway_amount=..., ...) -> a payment the sync flagged: the gateway holds another amount than ours."""
    def make(*, at_gateway="captured", gateway_amount=100000, gateway_currency=None):
        payment, pay_id = make_payment(at_gateway=at_gateway, amount=AMOUNT, gateway_amount=gateway_amount,
                                       gateway_currency=gateway_currency)
        assert payment_sync_pending()["mismatched"] == 1
        payment.refresh_from_db()
        assert payment.mismatch and payment.status == "created"
        return payment, pay_id
    return make


def refund_url(payment):
    return reverse("admin:payments_payment_refund", args=[payment.pk])


def resolve_url(payment):
    return reverse("admin:payments_payment_resolve", args=[payment.pk])


def page_messages(response) -> list[tuple[str, str]]:
    """The admin's messages on a page: (level, text)."""
    return [(level, html.unescape(text).strip()) for level, text in
            re.findall(r'<li class="(success|warning|error|info)">(.*?)</li>', response.content.decode(), re.S)]


def form_errors(response) -> list[str]:
    return [html.unescape(e) for e in re.findall(r'<ul class="errorlist[^"]*"[^>]*><li>(.*?)</li>',
                                                 response.content.decode(), re.S)]


def token_of(response) -> str:
    return re.search(r'name="token" value="([^"]+)"', response.content.decode())[1]


def refund_posts(fake, pay_id):
    return [c for c in fake.calls("payment_refund") if c["id"] == pay_id]


def no_traceback(response):
    body = response.content.decode()
    assert "Traceback" not in body and "Exception Value" not in body


# --- amounts --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed, paise", [
    ("1499.50", 149950), ("1499.5", 149950), (" 12 ", 1200), ("0.01", 1), (".5", 50), ("4999", 499900),
    ("1.230", 123),
])
def test_rupees_are_read_exactly_as_paise(typed, paise):
    assert paise_from_rupees(typed) == paise


BAD_AMOUNTS = [
    ("", "Enter the amount in rupees"),
    ("abc", "as digits with at most two decimals"),
    ("-5", "must be more than zero"),
    ("0", "must be more than zero"),
    ("0.00", "must be more than zero"),
    ("1.234", "whole paise: at most two decimals"),
    ("0.001", "whole paise: at most two decimals"),
    ("1e3", "as digits with at most two decimals"),
    ("NaN", "as digits with at most two decimals"),
    ("Infinity", "as digits with at most two decimals"),
    ("1,499.50", "as digits with at most two decimals"),
    ("₹100", "as digits with at most two decimals"),
    ("4999.01", "more than is left to refund: 4,999.00 INR"),
    ("99999999999999999999999", "more than is left to refund"),
]


@pytest.mark.parametrize("typed, error", BAD_AMOUNTS, ids=[repr(t) for t, _ in BAD_AMOUNTS])
def test_a_bad_amount_is_one_clear_error_and_refunds_nothing(client, captured, fake_gateway, typed, error):
    payment, pay_id = captured
    client.force_login(staff_user("cashier", VIEW, REFUND))
    token = token_of(client.get(refund_url(payment)))

    response = client.post(refund_url(payment), {"amount": typed, "reason": "course cancelled", "token": token})

    assert response.status_code == 200
    errors = form_errors(response)
    print(f"{typed!r}: {errors}")
    assert len(errors) == 1 and error in errors[0] and "\n" not in errors[0]
    no_traceback(response)
    assert not Refund.objects.exists() and not refund_posts(fake_gateway, pay_id)


def test_no_reason_is_refused(client, captured):
    payment, _ = captured
    client.force_login(staff_user("cashier", VIEW, REFUND))
    token = token_of(client.get(refund_url(payment)))
    response = client.post(refund_url(payment), {"amount": "10", "reason": "  ", "token": token})
    assert form_errors(response) == ["Say why the payment is refunded (kept with the refund)."]
    assert not Refund.objects.exists()


# --- permissions ----------------------------------------------------------------------------------------

def test_a_viewer_is_refused_the_refund_and_resolve_pages_and_posts(client, captured, flagged, fake_gateway):
    payment, pay_id = captured
    mismatched, _ = flagged()
    client.force_login(staff_user("viewer", VIEW))

    # the pages and their posts are refused, whatever is posted
    answers = [
        client.get(refund_url(payment)).status_code,
        client.post(refund_url(payment), {"amount": "10", "reason": "r", "token": "t" * 32}).status_code,
        client.get(resolve_url(mismatched)).status_code,
        client.post(resolve_url(mismatched), {"decision": "refund", "reason": "r", "token": "t" * 32}).status_code,
        client.post(resolve_url(mismatched), {"decision": "accept", "token": "t" * 32}).status_code,
    ]
    # the list's actions are not offered, and posting one is refused
    changelist = client.get(reverse("admin:payments_payment_changelist")).content.decode()
    action = client.post(reverse("admin:payments_payment_changelist"),
                         {"action": "refund", "_selected_action": [payment.pk]})
    change_page = client.get(reverse("admin:payments_payment_change", args=[payment.pk])).content.decode()
    print(f"viewer: pages and posts {answers}, action post {action.status_code}")

    assert answers == [403] * 5
    assert 'value="refund"' not in changelist and 'value="resolve_mismatch"' not in changelist
    assert action.status_code == 200  # the list again: no confirmation page to go to
    assert refund_url(payment) not in change_page
    assert not Refund.objects.exists() and not refund_posts(fake_gateway, pay_id)
    assert Payment.objects.exclude(mismatch="").count() == 1 and not LogEntry.objects.exists()


def test_refund_permission_alone_does_not_resolve_and_resolve_alone_does_not_refund(client, captured, flagged):
    payment, _ = captured
    mismatched, _ = flagged()
    client.force_login(staff_user("cashier", VIEW, REFUND))
    assert client.get(resolve_url(mismatched)).status_code == 403
    client.force_login(staff_user("resolver", VIEW, RESOLVE))
    assert client.get(refund_url(payment)).status_code == 403


# --- refunds --------------------------------------------------------------------------------------------

def test_a_partial_then_the_full_refund_from_the_admin(client, captured, fake_gateway,
                                                       django_capture_on_commit_callbacks):
    payment, pay_id = captured
    user = staff_user("cashier", VIEW, REFUND, "payments.view_refund")
    client.force_login(user)

    # the payment's page offers the refund; the confirmation page says what will happen
    change = client.get(reverse("admin:payments_payment_change", args=[payment.pk])).content.decode()
    assert refund_url(payment) in change
    page = client.get(refund_url(payment))
    text = page.content.decode()
    assert page.status_code == 200 and 'value="4999.00"' in text and "4,999.00 INR" in text
    assert f"order {payment.order_id} is marked refunded" in text and payment.order.user.email in text
    assert "the enrollment of" in text and "revoked" in text

    # a partial refund
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(refund_url(payment), {"amount": "1499.50", "reason": "late start",
                                                  "token": token_of(page)}, follow=True)
    (level, message), = page_messages(done)
    print(f"partial: {level}: {message}")
    refund = Refund.objects.get()
    assert level == "success" and "Refunded 1,499.50 INR" in message and "3,499.50 INR left to refund" in message
    assert (refund.amount_paise, refund.status, refund.requested_by, refund.reason) == (
        149950, "processed", "cashier", "late start")
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.PAID
    assert Enrollment.objects.get(order_id=payment.order_id).revoked_at is None and not mail.outbox
    entry = LogEntry.objects.get()
    assert entry.user == user and entry.object_id == str(payment.pk) and "Refunded 1,499.50 INR" in entry.change_message

    # the rest, as the page now offers it
    page = client.get(refund_url(payment))
    assert 'value="3499.50"' in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(refund_url(payment), {"amount": "3499.50", "reason": "course cancelled",
                                                  "token": token_of(page)}, follow=True)
    (level, message), = page_messages(done)
    print(f"rest: {level}: {message}")
    assert level == "success" and "its enrollment revoked and the customer's email queued" in message
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.REFUNDED
    assert Enrollment.objects.get(order_id=payment.order_id).revoked_at is not None
    assert len([m for m in mail.outbox if "refunded" in m.subject]) == 1
    assert sum(r["amount"] for r in fake_gateway.refunds(pay_id)) == AMOUNT
    assert LogEntry.objects.count() == 2
    # and the refunds are listed for the payment, and on its page
    listed = client.get(reverse("admin:payments_refund_changelist") + f"?payment__id__exact={payment.pk}")
    assert listed.status_code == 200 and listed.content.decode().count("rfnd_") == 2
    change = client.get(reverse("admin:payments_payment_change", args=[payment.pk])).content.decode()
    assert change.count("rfnd_") == 2 and refund_url(payment) not in change  # nothing left to refund


def test_the_same_form_posted_twice_refunds_once(client, captured, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = captured
    client.force_login(staff_user("cashier", VIEW, REFUND))
    form = {"amount": "1000", "reason": "late start", "token": token_of(client.get(refund_url(payment)))}

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(refund_url(payment), form, follow=True)
        second = client.post(refund_url(payment), form, follow=True)

    print(f"first: {page_messages(first)}\nsecond: {page_messages(second)}")
    assert page_messages(first)[0][0] == "success"
    (level, message), = page_messages(second)
    assert level == "success" and message.startswith("Already submitted: Refunded 1,000.00 INR")
    assert Refund.objects.count() == 1 and len(refund_posts(fake_gateway, pay_id)) == 1
    assert len(fake_gateway.refunds(pay_id)) == 1 and LogEntry.objects.count() == 1


def test_a_gateway_500_is_a_message_and_the_refund_waits_for_payment_sync(client, captured, fake_gateway):
    payment, pay_id = captured
    client.force_login(staff_user("cashier", VIEW, REFUND))
    token = token_of(client.get(refund_url(payment)))
    fake_gateway.set_faults(p_5xx=1.0)

    response = client.post(refund_url(payment), {"amount": "4999", "reason": "r", "token": token}, follow=True)

    (level, message), = page_messages(response)
    print(f"500: {level}: {message}")
    no_traceback(response)
    assert response.status_code == 200 and level == "warning"
    assert "the gateway did not answer (GatewayUnavailable" in message and "payment_sync asks again" in message
    refund = Refund.objects.get()
    assert refund.status == "requested" and not fake_gateway.refunds(pay_id)
    assert "did not answer" in LogEntry.objects.get().change_message


def test_a_refund_the_gateway_refuses_is_a_message_and_nothing_is_refunded(client, captured, fake_gateway):
    payment, pay_id = captured
    client.force_login(staff_user("cashier", VIEW, REFUND))
    token = token_of(client.get(refund_url(payment)))
    # refunded on the dashboard meanwhile: the gateway refuses another refund
    fake_gateway.set_status(pay_id, "refunded")
    before = len(fake_gateway.refunds(pay_id))

    response = client.post(refund_url(payment), {"amount": "100", "reason": "r", "token": token}, follow=True)

    (level, message), = page_messages(response)
    print(f"refused: {level}: {message}")
    no_traceback(response)
    assert level == "error" and message.startswith("The gateway refused the refund of 100.00 INR")
    assert "fully refunded already" in message and message.endswith("Nothing was refunded.")
    assert Refund.objects.get().status == "failed" and len(fake_gateway.refunds(pay_id)) == before


def test_a_payment_not_captured_has_no_refund_page(client, make_payment):
    payment, _ = make_payment(at_gateway="authorized", local_status="authorized")
    client.force_login(staff_user("cashier", VIEW, REFUND))
    response = client.get(refund_url(payment), follow=True)
    assert page_messages(response) == [
        ("error", f"Payment {payment.pk} is authorized: only a captured payment can be refunded.")]
    assert refund_url(payment) not in response.content.decode()


def test_the_list_action_opens_the_confirmation_page_of_one_payment(client, captured):
    payment, _ = captured
    other = PaymentFactory()
    client.force_login(staff_user("cashier", VIEW, REFUND))
    url = reverse("admin:payments_payment_changelist")

    one = client.post(url, {"action": "refund", "_selected_action": [payment.pk]})
    two = client.post(url, {"action": "refund", "_selected_action": [payment.pk, other.pk]}, follow=True)

    assert one.status_code == 302 and one["Location"] == refund_url(payment)
    assert page_messages(two) == [("warning", "Select one payment to refund: each has its own confirmation page.")]


# --- mismatches -----------------------------------------------------------------------------------------

def test_accepting_the_gateways_amount_pays_the_order_and_clears_the_alert(
        client, flagged, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = flagged(gateway_amount=100000)
    assert evaluate_rules()["payments:mismatch"] == "opened"
    user = staff_user("resolver", VIEW, RESOLVE)
    client.force_login(user)

    change = client.get(reverse("admin:payments_payment_change", args=[payment.pk])).content.decode()
    assert resolve_url(payment) in change
    page = client.get(resolve_url(payment))
    text = page.content.decode()
    assert page.status_code == 200 and f"{pay_id}: <strong>captured</strong>, 100000 paise INR" in text
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(resolve_url(payment), {"decision": "accept", "token": token_of(page)}, follow=True)

    (level, message), = page_messages(done)
    print(f"accept: {level}: {message}")
    payment.refresh_from_db()
    order = Order.objects.get(pk=payment.order_id)
    assert level == "success" and "the gateway's 1,000.00 INR accepted (the order asked 4,999.00 INR)" in message
    assert (payment.status, payment.amount_paise, payment.mismatch) == ("captured", 100000, "")
    assert (order.status, order.amount_paise) == (OrderStatus.PAID, 100000)
    assert Enrollment.objects.filter(order=order).exists()
    assert not fake_gateway.refunds(pay_id)
    entry = LogEntry.objects.get()
    assert entry.user == user
    assert entry.change_message.startswith(f"Resolve mismatch (accept): payment {payment.pk}: the gateway")
    assert evaluate_rules() == {"payments:mismatch": "resolved"}
    assert AlertIncident.objects.get(job="payments:mismatch").resolved_at is not None


def test_accepting_another_currency_is_refused_and_changes_nothing(client, flagged, fake_gateway):
    payment, pay_id = flagged(gateway_amount=AMOUNT, gateway_currency="USD")
    client.force_login(staff_user("resolver", VIEW, RESOLVE))
    token = token_of(client.get(resolve_url(payment)))

    response = client.post(resolve_url(payment), {"decision": "accept", "token": token})

    errors = form_errors(response)
    print(f"USD: {errors}")
    assert errors == [f"payment {payment.pk}: the gateway's currency USD is not ours (INR, order INR); "
                      f"only refund and cancel resolves it"]
    payment.refresh_from_db()
    assert payment.mismatch and payment.status == "created" and payment.claimed_until is None
    assert not LogEntry.objects.exists()


def test_refund_and_cancel_refunds_the_gateways_amount_once_and_cancels_the_order(
        client, flagged, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = flagged(gateway_amount=100000)
    client.force_login(staff_user("resolver", VIEW, RESOLVE))
    form = {"decision": "refund", "reason": "amount tampered", "token": token_of(client.get(resolve_url(payment)))}

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(resolve_url(payment), form, follow=True)
        second = client.post(resolve_url(payment), form, follow=True)

    print(f"first: {page_messages(first)}\nsecond: {page_messages(second)}")
    (level, message), = page_messages(first)
    assert level == "success" and "1,000.00 INR refunded (rfnd_" in message and "cancelled" in message
    assert page_messages(second)[0][1].startswith(f"Payment {payment.pk}: already asked: 1,000.00 INR refunded")
    payment.refresh_from_db()
    assert (payment.status, payment.amount_paise, payment.refunded_paise, payment.mismatch) == (
        "refunded", 100000, 100000, "")
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.CANCELLED
    assert [r["amount"] for r in fake_gateway.refunds(pay_id)] == [100000] and Refund.objects.count() == 1
    assert Refund.objects.get().requested_by == "resolver" and LogEntry.objects.count() == 1
    assert not Enrollment.objects.exists() and not mail.outbox


def test_refund_and_cancel_releases_an_authorization(client, flagged, fake_gateway):
    payment, pay_id = flagged(at_gateway="authorized", gateway_amount=100000)
    client.force_login(staff_user("resolver", VIEW, RESOLVE))
    token = token_of(client.get(resolve_url(payment)))

    done = client.post(resolve_url(payment), {"decision": "refund", "reason": "wrong amount", "token": token},
                       follow=True)

    (level, message), = page_messages(done)
    print(f"released: {level}: {message}")
    payment.refresh_from_db()
    assert level == "success" and "authorization of 1,000.00 INR released" in message
    assert (payment.status, payment.mismatch) == ("refunded", "")
    assert fake_gateway.payment(pay_id)["status"] == "refunded" and fake_gateway.captures(pay_id) == 0
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.CANCELLED


def test_a_second_payment_for_a_paid_order_is_refunded_and_the_order_stays_paid(
        client, captured, fake_gateway, django_capture_on_commit_callbacks):
    # given an order paid and enrolled, and a second payment the customer made for it
    first, _ = captured
    rzp_order = fake_gateway.add_order(amount=AMOUNT)
    second_id = fake_gateway.add_payment(order_id=rzp_order["id"], status="captured")["id"]
    old = first.created_at
    second = PaymentFactory(order=first.order, razorpay_order_id=rzp_order["id"], amount_paise=AMOUNT,
                            created_at=old, updated_at=old)
    assert payment_sync_pending()["captured_unpayable"] == 1
    second.refresh_from_db()
    assert second.status == "captured" and "was not payable" in second.mismatch
    client.force_login(staff_user("resolver", VIEW, RESOLVE))
    token = token_of(client.get(resolve_url(second)))

    # when it is refunded
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(resolve_url(second), {"decision": "refund", "reason": "paid twice", "token": token},
                           follow=True)

    # then only the duplicate goes back: the order stays paid by the first, the enrollment stands, no email
    (level, message), = page_messages(done)
    print(f"duplicate: {level}: {message}")
    second.refresh_from_db()
    assert level == "success" and f"order {first.order_id} left paid" in message
    assert (second.status, second.mismatch) == ("refunded", "")
    assert Order.objects.get(pk=first.order_id).status == OrderStatus.PAID
    assert Enrollment.objects.get(order_id=first.order_id).revoked_at is None and not mail.outbox
    assert [r["amount"] for r in fake_gateway.refunds(second_id)] == [AMOUNT]


def test_a_gateway_500_while_resolving_is_a_message_and_changes_nothing(client, flagged, fake_gateway):
    payment, pay_id = flagged(gateway_amount=100000)
    client.force_login(staff_user("resolver", VIEW, RESOLVE))
    token = token_of(client.get(resolve_url(payment)))
    fake_gateway.set_faults(p_5xx=1.0)

    outcomes = {}
    for decision in ("accept", "refund"):
        response = client.post(resolve_url(payment), {"decision": decision, "reason": "r", "token": token})
        no_traceback(response)
        outcomes[decision] = form_errors(response)
    print(f"500: {outcomes}")

    for errors in outcomes.values():
        assert len(errors) == 1 and errors[0].startswith("The gateway did not answer, nothing changed: razorpay")
    payment.refresh_from_db()
    assert payment.mismatch and payment.status == "created" and payment.claimed_until is None
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.PENDING
    assert not Refund.objects.exists() and not fake_gateway.refunds(pay_id) and not LogEntry.objects.exists()
