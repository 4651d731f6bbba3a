"""The admin as production serves it: gunicorn, DEBUG off, static files collected and served by WhiteNoise."""
import re

import pytest
import requests

from tests.browser import admin_login, chromium
from tests.served import gunicorn, production_env, set_production_password

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def served(process_env, tmp_path):
    """gunicorn on a free port with production-like settings; its base URL."""
    env = production_env(process_env, tmp_path)
    with gunicorn(env, tmp_path / "gunicorn.log", "-w", "1") as base:
        yield base


@pytest.mark.django_db(transaction=True)
def test_static_files_are_hashed_compressed_and_cached_for_ever(served):
    page = requests.get(f"{served}/admin/login/", timeout=10)
    assert page.status_code == 200
    css = re.findall(r'href="(/static/admin/css/[^"]+\.css)"', page.text)
    assert css, "the login page links no stylesheet"
    # Hashed names (base.<hash>.css), so a deploy never serves yesterday's file from a cache.
    assert all(re.search(r"\.[0-9a-f]{12}\.css$", href) for href in css), css

    response = requests.get(f"{served}{css[0]}", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert "immutable" in response.headers["Cache-Control"]
    max_age = int(re.search(r"max-age=(\d+)", response.headers["Cache-Control"])[1])
    assert max_age >= 365 * 86400
    print(f"\n{css[0]}: {len(response.content)} bytes, {response.headers['Cache-Control']}")


@pytest.mark.django_db(transaction=True)
def test_the_admin_is_styled_in_a_real_browser(served, django_user_model, tmp_path):
    from selenium.webdriver.common.by import By

    set_production_password(django_user_model.objects.create_superuser("ops", "ops@example.com"),
                            "a-long-password-1")
    with chromium(tmp_path) as browser:
        admin_login(browser, served, "ops", "a-long-password-1")
        browser.get(f"{served}/admin/")
        browser.find_element(By.ID, "user-tools")  # logged in: the admin index, not the login page
        assert browser.find_element(By.ID, "site-name")
        header = browser.find_element(By.ID, "header")
        # Unstyled, the header is transparent and the body uses the browser's serif default.
        background = header.value_of_css_property("background-color")
        font = browser.find_element(By.TAG_NAME, "body").value_of_css_property("font-family")
        print(f"\nheader background {background}, body font {font}")
        assert background not in ("rgba(0, 0, 0, 0)", "transparent")
        assert "serif" not in font.split(",")[0]
        browser.save_screenshot(str(tmp_path / "admin-index.png"))
