"""The sender's SSRF check with the system resolver: every spelling of a non-public address
(decimal, hex, IPv4-mapped, a name in /etc/hosts) is refused before anything is sent, and
a public address is connected to as checked, under the URL's host name."""

from __future__ import annotations

import httpx
import pytest

from services.notifications.domain import UrlPolicy
from services.notifications.sender import WebhookSender


@pytest.fixture
def sent() -> list[httpx.Request]:
    return []


@pytest.fixture
def sender(sent: list[httpx.Request]) -> WebhookSender:
    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    return WebhookSender(UrlPolicy.for_runtime("aws"), transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/hook",
        "https://2130706433/hook",
        "https://0x7f.1/hook",
        "https://127.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::]/hook",
    ],
)
def test_a_non_public_address_in_any_spelling_is_refused_unsent(
    sender: WebhookSender, sent: list[httpx.Request], url: str
) -> None:
    result = sender.send(url, b"{}", {})
    assert result.refused and result.status_code is None, result
    assert sent == []


def test_a_public_address_is_sent_to_as_checked(sender: WebhookSender, sent: list[httpx.Request]) -> None:
    result = sender.send("https://93.184.215.14:8443/hook?a=1", b"{}", {"Palette-Signature": "v1=x"})
    assert result.delivered
    [request] = sent
    assert request.url == httpx.URL("https://93.184.215.14:8443/hook?a=1")
    assert request.headers["host"] == "93.184.215.14:8443" and request.headers["palette-signature"] == "v1=x"


def test_an_unresolvable_host_is_a_failed_attempt_not_a_crash(sender: WebhookSender) -> None:
    result = sender.send("https://no-such-host.invalid/hook", b"{}", {})
    assert not result.delivered and not result.refused and result.error


def test_the_sender_sends_http_only_to_localhost_by_its_own_reading_of_the_url(sent: list[httpx.Request]) -> None:
    """Registration checks the URL with one parser and the sender connects with another: the
    sender checks the embedded runtime's http rule again by its own reading, so a URL the two
    read differently is never sent in plain text to another host."""

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    local = WebhookSender(UrlPolicy.for_runtime("local"), transport=httpx.MockTransport(answer))
    refused = local.send("http://127.0.0.1:18302\\@example.com/bs", b"{}", {})
    assert refused.refused and not sent
    assert local.send("http://127.0.0.1:18302/hook", b"{}", {}).status_code == 204 and len(sent) == 1
