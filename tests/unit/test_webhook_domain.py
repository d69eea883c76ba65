"""The notifications domain: which URLs a runtime accepts, which addresses are never
reached on AWS, and when a failing delivery is retried or given up."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from contracts.events.notifications import WebhookDeliveryScheduled
from services.notifications.domain import (
    RETRY_WINDOW,
    Delivery,
    InvalidWebhook,
    SendResult,
    UrlPolicy,
    check_url,
    evolve_delivery,
    exponential_backoff,
    forbidden_address,
    record_attempt,
)

LOCAL, AWS = UrlPolicy.for_runtime("local"), UrlPolicy.for_runtime("aws")
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "local", "aws"),
    [
        ("https://hooks.example.com/palette", True, True),
        ("https://hooks.example.com:8443/p?x=1", True, True),
        ("http://localhost:8080/hook", True, False),
        ("http://127.0.0.1:8080/hook", True, False),
        ("http://[::1]:8080/hook", True, False),
        ("http://hooks.example.com/palette", False, False),
        ("https://localhost/hook", True, False),
        ("https://10.0.0.1/hook", True, False),
        ("https://169.254.169.254/latest/meta-data", True, False),
        ("https://[fd00::1]/hook", True, False),
        ("https://[::ffff:192.168.1.1]/hook", True, False),
        ("https://user:pass@hooks.example.com/", False, False),
        ("ftp://hooks.example.com/", False, False),
        ("hooks.example.com/palette", False, False),
        ("http://127.0.0.1:18302\\@example.com/bs", False, False),  # parsers disagree on its host
        ("https://hooks.example.com\\@10.0.0.1/", False, False),
    ],
)
def test_urls_each_runtime_accepts(url: str, local: bool, aws: bool) -> None:
    for policy, accepted in ((LOCAL, local), (AWS, aws)):
        if accepted:
            assert check_url(url, policy) == url
        else:
            with pytest.raises(InvalidWebhook):
                check_url(url, policy)


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("93.184.215.14", False),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", False),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.0.1", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:10.0.0.1", True),
        ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
    ],
)
def test_addresses_never_reached_on_aws(address: str, forbidden: bool) -> None:
    assert forbidden_address(ipaddress.ip_address(address)) is forbidden


def scheduled() -> Delivery:
    event = WebhookDeliveryScheduled(
        webhook_id="whk_1",
        delivery_id="dlv_1",
        owner="alice",
        event_id="evt-1",
        event_type="job.completed",
        occurred_at=T0,
    )
    return evolve_delivery(Delivery(), event, T0)


def test_backoff_triples_to_an_hour_and_a_delivery_is_given_up_24_hours_after_scheduling() -> None:
    assert [exponential_backoff(n).total_seconds() for n in range(1, 8)] == [30, 90, 270, 810, 2430, 3600, 3600]
    state, now = scheduled(), T0
    while True:
        attempt = record_attempt(state, SendResult(status_code=503), now, exponential_backoff)
        state = evolve_delivery(state, attempt)
        if attempt.outcome != "failed":
            break
        assert attempt.next_attempt_at is not None and attempt.next_attempt_at <= T0 + RETRY_WINDOW
        now = attempt.next_attempt_at
    assert attempt.outcome == "gave_up" and now == T0 + RETRY_WINDOW
    assert attempt.attempt == 29 and attempt.error == "HTTP 503"
    assert not state.due(now + timedelta(days=1))


def test_a_2xx_delivers_and_a_forbidden_address_is_refused_for_good() -> None:
    delivered = record_attempt(scheduled(), SendResult(status_code=204), T0, exponential_backoff)
    assert (delivered.outcome, delivered.next_attempt_at) == ("delivered", None)
    redirected = record_attempt(scheduled(), SendResult(status_code=302), T0, exponential_backoff)
    assert redirected.outcome == "failed" and redirected.error == "HTTP 302"
    refused = record_attempt(scheduled(), SendResult(error="refused: 10.0.0.1", refused=True), T0, exponential_backoff)
    assert refused.outcome == "refused" and not evolve_delivery(scheduled(), refused).due(T0 + RETRY_WINDOW)
