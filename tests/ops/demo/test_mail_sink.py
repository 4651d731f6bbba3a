"""The demo's SMTP sink: Django's SMTP backend delivers to it, the email health check finds it up."""
import email

import pytest
from django.core.mail import EmailMessage, get_connection

from ops.demo.mail_sink import MailSink
from ops.maintenance.checks import email_service_check

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture
def sink(tmp_path):
    server = MailSink(tmp_path / "mail").start()
    yield server
    server.stop()


def test_messages_sent_over_smtp_are_kept_as_files(sink):
    connection = get_connection("django.core.mail.backends.smtp.EmailBackend", host="127.0.0.1",
                                port=sink.port, timeout=5)
    body = "Your enrollment is confirmed.\n.a line that starts with a dot\n"
    sent = connection.send_messages([
        EmailMessage("Enrolled", body, "checkout@localhost", ["a@example.com"]),
        EmailMessage("Order expired", "Pay again.", "checkout@localhost", ["b@example.com", "c@example.com"]),
    ])

    assert sent == 2
    files = sink.messages()
    assert len(files) == 2
    first = email.message_from_bytes(files[0].read_bytes())
    assert first["Subject"] == "Enrolled" and first["To"] == "a@example.com"
    assert ".a line that starts with a dot" in first.get_payload()
    assert email.message_from_bytes(files[1].read_bytes())["To"] == "b@example.com, c@example.com"


def test_the_email_health_check_finds_the_sink_up(sink, settings):
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    assert email_service_check().status == "ok"
