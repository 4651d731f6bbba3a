"""Orders and enrollments in the admin: money records nobody adds, edits or deletes by hand, whatever
is posted; internships with orders are not deleted."""
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from orders.models import Enrollment, Internship, Order
from tests.factories import EnrollmentFactory, InternshipFactory, OrderFactory, UserFactory, staff_user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

ORDER_TIMES = ("created_at", "updated_at", "paid_at", "expired_at", "cancelled_at", "refunded_at",
               "expiration_email_sent_at")
ALL_ORDER_PERMS = ("orders.view_order", "orders.add_order", "orders.change_order", "orders.delete_order")


def _split(value) -> dict:
    local = timezone.localtime(value) if value else None
    return {"0": f"{local:%Y-%m-%d}" if local else "", "1": f"{local:%H:%M:%S}" if local else ""}


def order_form(order: Order, **changes) -> dict:
    """The order's change form as a browser would post it, every editable field filled, with `changes`."""
    values = {
        "user": order.user_id, "internship": order.internship_id, "cart": order.cart_id or "",
        "amount_paise": order.amount_paise, "currency": order.currency, "status": order.status,
        **{name: getattr(order, name) for name in ORDER_TIMES},
        **changes,
    }
    data = {"_save": "Save"}
    for name, value in values.items():
        if name in ORDER_TIMES:
            data.update({f"{name}_{part}": text for part, text in _split(value).items()})
        else:
            data[name] = "" if value is None else value
    return data


def _unchanged(order: Order) -> None:
    fresh = Order.objects.get(pk=order.pk)
    assert (fresh.status, fresh.amount_paise, fresh.currency, fresh.paid_at, fresh.user_id) == (
        order.status, order.amount_paise, order.currency, order.paid_at, order.user_id)


@pytest.mark.parametrize("who", ["clerk with change_order", "superuser"])
def test_a_posted_change_form_cannot_mark_an_order_paid(client, who):
    # given a pending order of 4,999.00 INR
    order = OrderFactory(amount_paise=499900)
    if who == "superuser":
        user = UserFactory(username="root", is_staff=True, is_superuser=True)
    else:
        user = staff_user("clerk", "orders.view_order", "orders.change_order")
    client.force_login(user)
    url = reverse("admin:orders_order_change", args=[order.pk])

    # when the change form is posted directly: paid, for 1 paisa, to another user
    response = client.post(url, order_form(
        order, status="paid", amount_paise=1, currency="USD", paid_at=timezone.now(), user=UserFactory().pk,
    ))

    # then it is refused and the order is as it was; the page itself offers no field to edit
    assert response.status_code == 403
    _unchanged(order)
    assert not LogEntry.objects.exists()
    page = client.get(url).content.decode()
    assert 'name="status"' not in page and 'name="amount_paise"' not in page and 'name="_save"' not in page
    assert "4999" in page.replace(",", "") or "499900" in page


def test_orders_are_neither_added_nor_deleted_by_hand(client):
    # given a paid order and a clerk holding every order permission
    order = OrderFactory(amount_paise=499900, status="paid", paid_at=timezone.now())
    client.force_login(staff_user("clerk", *ALL_ORDER_PERMS))

    # when the clerk posts an add form, the delete page, and the bulk delete action
    added = client.post(reverse("admin:orders_order_add"), order_form(
        OrderFactory.build(user=UserFactory(), internship=InternshipFactory(), amount_paise=1, status="paid", paid_at=timezone.now(),
                           created_at=timezone.now(), updated_at=timezone.now()),
    ))
    deleted = client.post(reverse("admin:orders_order_delete", args=[order.pk]), {"post": "yes"})
    bulk = client.post(reverse("admin:orders_order_changelist"),
                       {"action": "delete_selected", "_selected_action": [order.pk], "post": "yes"}, follow=True)

    # then every one is refused: the order is still there, and no other was made
    assert added.status_code == 403 and deleted.status_code == 403
    assert bulk.status_code == 200 and "delete_selected" not in bulk.content.decode()
    assert list(Order.objects.values_list("pk", flat=True)) == [order.pk]
    _unchanged(order)


def test_enrollments_are_read_only_whatever_is_posted(client):
    # given an enrollment and a clerk holding every enrollment permission
    enrollment = EnrollmentFactory()
    other = OrderFactory(status="paid", paid_at=timezone.now())
    client.force_login(staff_user("clerk", "orders.view_enrollment", "orders.add_enrollment",
                                  "orders.change_enrollment", "orders.delete_enrollment"))
    created = enrollment.created_at

    # when the clerk posts a change moving it to another order and user, an add, and a delete
    changed = client.post(reverse("admin:orders_enrollment_change", args=[enrollment.pk]), {
        "order": other.pk, "user": other.user_id, "internship": other.internship_id,
        "created_at_0": "2020-01-01", "created_at_1": "00:00:00", "confirmation_sent_at_0": "",
        "confirmation_sent_at_1": "", "_save": "Save",
    })
    added = client.post(reverse("admin:orders_enrollment_add"), {
        "order": other.pk, "user": other.user_id, "internship": other.internship_id,
        "created_at_0": "2020-01-01", "created_at_1": "00:00:00", "_save": "Save",
    })
    deleted = client.post(reverse("admin:orders_enrollment_delete", args=[enrollment.pk]), {"post": "yes"})

    # then all are refused and the enrollment is as it was
    assert (changed.status_code, added.status_code, deleted.status_code) == (403, 403, 403)
    fresh = Enrollment.objects.get()
    assert (fresh.pk, fresh.order_id, fresh.user_id, fresh.created_at) == (
        enrollment.pk, enrollment.order_id, enrollment.user_id, created)


def test_an_internship_with_orders_is_not_deleted_but_one_without_is(client):
    # given an internship that sold an order, one that sold nothing, and a catalogue editor
    sold = OrderFactory(amount_paise=499900).internship
    unsold = InternshipFactory()
    client.force_login(staff_user("editor", "orders.view_internship", "orders.change_internship",
                                  "orders.delete_internship"))
    changelist = reverse("admin:orders_internship_changelist")

    # when the editor deletes each on its page, and both at once from the list
    refused = client.post(reverse("admin:orders_internship_delete", args=[sold.pk]), {"post": "yes"})
    both = client.post(changelist, {"action": "delete_selected", "_selected_action": [sold.pk, unsold.pk],
                                    "post": "yes"})
    assert Internship.objects.filter(pk__in=[sold.pk, unsold.pk]).count() == 2
    allowed = client.post(reverse("admin:orders_internship_delete", args=[unsold.pk]), {"post": "yes"})

    # then the sold one stays (the pages say why), the unsold one goes, and the deletion is logged
    for page in (refused, both):
        assert page.status_code == 200 and "has orders: mark it inactive instead" in page.content.decode()
    assert allowed.status_code == 302
    assert list(Internship.objects.values_list("pk", flat=True)) == [sold.pk]
    assert Order.objects.get().internship_id == sold.pk
    entry = LogEntry.objects.get()
    assert entry.is_deletion() and entry.user.username == "editor" and entry.object_id == str(unsold.pk)


def test_the_order_list_and_page_render_for_a_viewer(client):
    order = OrderFactory(amount_paise=123456, created_at=timezone.now() - timedelta(hours=1))
    client.force_login(staff_user("viewer", "orders.view_order"))
    assert client.get(reverse("admin:orders_order_changelist")).status_code == 200
    assert client.get(reverse("admin:orders_order_change", args=[order.pk])).status_code == 200
