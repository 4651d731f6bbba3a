"""/metrics and the detail of /health/ for operators only (OPS_TOKEN, OPS_ALLOWED_NETWORKS); the status
code of /health/ stays public."""
import secrets
import subprocess
import sys
from ipaddress import ip_network

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TOKEN = "s3cret-ops-token-for-tests"


@pytest.mark.django_db
def test_with_a_token_strangers_get_the_status_and_operators_the_detail(client, redis_client, settings):
    # given
    settings.OPS_TOKEN = TOKEN

    # when
    public = client.get("/health/")
    detailed = client.get("/health/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    wrong = client.get("/health/", HTTP_AUTHORIZATION="Bearer not-the-token")

    # then the same status code for everyone, the detail only with the token
    assert public.status_code == detailed.status_code == wrong.status_code
    assert set(public.json()) == set(wrong.json()) == {"status", "timestamp"}
    assert public.json()["status"] == detailed.json()["status"]
    assert {"services", "cron_jobs", "background_jobs"} <= set(detailed.json())


@pytest.mark.django_db
def test_with_a_token_metrics_need_it(client, redis_client, settings):
    settings.OPS_TOKEN = TOKEN
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert b"checkout_" not in refused.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    granted = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")
    assert granted.status_code == 200 and b"checkout_scrape_errors" in granted.content


@pytest.mark.django_db
def test_an_allowlist_admits_its_networks_only(client, redis_client, settings):
    # given operators on 10.1.0.0/16 and the loopback of the host
    settings.OPS_ALLOWED_NETWORKS = [ip_network("10.1.0.0/16"), ip_network("::1/128")]

    # then
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="not-an-address").status_code == 403
    assert set(client.get("/health/", REMOTE_ADDR="192.0.2.7").json()) == {"status", "timestamp"}
    assert "services" in client.get("/health/", REMOTE_ADDR="10.1.200.1").json()


@pytest.mark.django_db
def test_with_nothing_set_both_are_open(client, redis_client):
    assert client.get("/metrics").status_code == 200
    assert "services" in client.get("/health/").json()


def test_a_bad_allowlist_stops_start_up_with_one_line():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SECRET_KEY": secrets.token_urlsafe(50),
             "OPS_ALLOWED_NETWORKS": "10.0.0.0/8,office"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: OPS_ALLOWED_NETWORKS='10.0.0.0/8,office' is not a list of addresses or networks",
    ]
