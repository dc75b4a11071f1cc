"""Credentials come only from the environment (SERQ_AMQP_URL) and never reach a log line.

A worker runs with a password in SERQ_AMQP_URL, at DEBUG level (pika's own logs too),
in text and in JSON, against the shared broker: once with a user the broker refuses,
once with a real user made for this test (``rabbitmqctl add_user``, deleted afterwards).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from serq.client import Client
from serq.client.errors import BrokerUnavailable
from serq.settings import Settings

from .conftest import record
from .payloads import encode, tone

pytestmark = pytest.mark.broker


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def secret() -> str:
    """A password that cannot occur in a log by chance (and has URL-escaped characters)."""
    return f"pw-{secrets.token_hex(12)}/+!"


def leaks(text: str, password: str) -> list[str]:
    """Lines that contain the password, raw or URL-escaped."""
    forms = {password, quote(password, safe=""), quote(password)}
    return [line for line in text.splitlines() if any(form in line for form in forms)]


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def broker_user(amqp_url):
    """A user of its own on the shared broker (unique name, random password), deleted at the end."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not available to create a user")
    user, password = f"serq-rel-{secrets.token_hex(4)}", secret()
    made = rabbitmqctl("add_user", user, password)
    if made.returncode != 0:
        pytest.skip(f"rabbitmqctl add_user failed: {made.stderr[-300:]}")
    try:
        vhost = urlsplit(amqp_url).path[1:].replace("%2F", "/") or "/"
        assert rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*").returncode == 0
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


@pytest.mark.parametrize("json_logs", ["0", "1"])
def test_a_refused_password_is_never_logged(start_worker, amqp_url, json_logs):
    password = secret()
    url = with_credentials(amqp_url, f"serq-nobody-{secrets.token_hex(3)}", password)
    proc = start_worker({"SERQ_AMQP_URL": url, "SERQ_LOG_LEVEL": "DEBUG", "SERQ_LOG_JSON": json_logs}, wait=False)
    deadline = time.monotonic() + 90
    while proc.log_path.read_text().count("refused the credentials") < 2:  # it keeps retrying, with backoff
        assert proc.poll() is None and time.monotonic() < deadline, proc.log_path.read_text()[-2000:]
        time.sleep(0.2)
    proc.terminate()
    proc.wait(30)
    log = proc.log_path.read_text()
    assert not leaks(log, password), leaks(log, password)
    assert "***" in log  # the URL is logged, redacted
    # The client library's error says what is wrong, without the password either.
    with pytest.raises(BrokerUnavailable) as err:
        Client(settings=Settings(amqp_url=url))
    assert "refused the credentials" in str(err.value) and not leaks(str(err.value), password)


def test_a_working_password_is_never_logged(start_worker, amqp_url, prefix, broker_user):
    user, password = broker_user
    url = with_credentials(amqp_url, user, password)
    proc = start_worker({"SERQ_AMQP_URL": url, "SERQ_LOG_LEVEL": "DEBUG"})
    with Client(settings=Settings(amqp_url=url, prefix=prefix)) as client:
        result = client.classify(encode(tone(1.0), 16_000), timeout=60)
    proc.terminate()
    assert proc.wait(30) == 0
    log = proc.log_path.read_text()
    record("worker with a password in SERQ_AMQP_URL (DEBUG logs)", 1, [result],
           "pytest tests/reliability/test_credentials.py", password_in_logs=len(leaks(log, password)))
    assert result.worker and "consuming" in log and f"{user}:***@" in log
    assert not leaks(log, password), leaks(log, password)
