"""A refund as an operator makes it: gunicorn with DEBUG off and collected static files, a real browser, a user
holding the refund permission, the fake Razorpay reached over HTTP from the server process."""
import pytest
from django.utils import timezone

from payments.models import Refund
from tests.browser import admin_login, chromium
from tests.factories import staff_user
from tests.payments.conftest import KEY_ID, KEY_SECRET
from tests.served import gunicorn, production_env, set_production_password

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PASSWORD = "a-long-password-1"


@pytest.fixture
def served(process_env, fake_gateway, tmp_path):
    """gunicorn with production settings, but plain http on 127.0.0.1 (TLS ends at the proxy in production)."""
    env = production_env(process_env, tmp_path, DB_CONN_MAX_AGE="0", RAZORPAY_BASE_URL=fake_gateway.base_url,
                         RAZORPAY_KEY_ID=KEY_ID, RAZORPAY_KEY_SECRET=KEY_SECRET, RAZORPAY_RATE_LIMIT="0")
    with gunicorn(env, tmp_path / "gunicorn.log", "-w", "1") as base:
        yield base


@pytest.mark.django_db(transaction=True)
def test_a_partial_refund_through_the_styled_confirmation_page(served, make_payment, fake_gateway, tmp_path):
    from selenium.webdriver.common.by import By

    # given a captured payment of a paid order, and a cashier who may refund
    payment, pay_id = make_payment(at_gateway="captured", local_status="captured", amount=499900,
                                   status="paid", paid_at=timezone.now())
    cashier = staff_user("cashier", "payments.view_payment", "payments.refund_payment", "payments.view_refund")
    set_production_password(cashier, PASSWORD)

    with chromium(tmp_path) as browser:
        admin_login(browser, served, "cashier", PASSWORD)
        browser.find_element(By.ID, "user-tools")  # logged in
        # when the cashier opens the payment and clicks Refund
        browser.get(f"{served}/admin/payments/payment/{payment.pk}/change/")
        browser.find_element(By.CLASS_NAME, "refund-link").click()

        # then the confirmation page is styled and says what will happen
        title = browser.title
        happen = browser.find_element(By.ID, "what-will-happen")
        heading = happen.find_element(By.TAG_NAME, "h2")
        background = heading.value_of_css_property("background-color")
        font = browser.find_element(By.TAG_NAME, "body").value_of_css_property("font-family")
        left = browser.find_element(By.ID, "left-to-refund").text
        amount = browser.find_element(By.NAME, "amount")
        print(f"\npage: {title!r}; left to refund {left}; prefilled {amount.get_attribute('value')}"
              f"\nheading background {background}, body font {font}\nwhat will happen:\n{happen.text}")
        browser.save_screenshot(str(tmp_path / "refund-confirmation.png"))
        assert "Refund payment" in title and left == "4,999.00 INR"
        assert background not in ("rgba(0, 0, 0, 0)", "transparent")
        assert "serif" not in font.split(",")[0]
        assert f"order {payment.order_id} is marked refunded" in happen.text
        assert "Less than that" in happen.text and "the enrollment stands" in happen.text

        # when a partial amount is submitted
        amount.clear()
        amount.send_keys("1499.50")
        browser.find_element(By.NAME, "reason").send_keys("started a week late")
        browser.find_element(By.NAME, "_refund").click()

        # then the payment's page says it was refunded
        message = browser.find_element(By.CSS_SELECTOR, "ul.messagelist li.success").text
        print(f"message: {message}")
        browser.save_screenshot(str(tmp_path / "refund-done.png"))
        assert message.startswith("Refunded 1,499.50 INR of payment") and "3,499.50 INR left to refund" in message

    refund = Refund.objects.get()
    assert (refund.amount_paise, refund.status, refund.requested_by) == (149950, "processed", "cashier")
    assert [r["amount"] for r in fake_gateway.refunds(pay_id)] == [149950]
