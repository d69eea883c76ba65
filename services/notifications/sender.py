"""One HTTP POST of a signed payload to a webhook's URL (httpx), with the SSRF check.

Under a public-only policy (AWS) the host is resolved at every attempt and every address it
resolves to is checked (`domain.forbidden_address`): one private, loopback or link-local
address and nothing is sent. The request then goes to the address that was checked, with
the URL's host in the Host header and as the TLS server name (so the certificate is still
verified against the host name), so a DNS answer that changes between the check and the
connection (rebinding) cannot redirect it. Redirects are never followed: a 3xx is a failed
attempt.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

import httpx

from services.notifications.domain import LOCAL_HOSTS, SendResult, UrlPolicy, forbidden_address, literal_address

Resolve = Callable[[str, int], list[str]]
"""A host and port -> the addresses it resolves to (injectable in tests)."""

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)


def resolve_host(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


class WebhookSender:
    def __init__(
        self,
        policy: UrlPolicy,
        resolve: Resolve = resolve_host,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._policy = policy
        self._resolve = resolve
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, transport=transport)

    def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        try:
            target = httpx.URL(url)
            extensions: dict[str, str] = {}
            request_headers = {"Content-Type": "application/json", "User-Agent": "Palette-Webhooks/1", **headers}
            if target.scheme == "http" and not (self._policy.local_http and target.host in LOCAL_HOSTS):
                # registration checked this; the sender's own parser must agree before anything is sent
                return SendResult(error=f"refused: http to {target.host} (http only to localhost)", refused=True)
            if self._policy.public_only:
                address = self._checked_address(target.host, target.port or 443)
                if address is None:
                    return SendResult(error=f"refused: {target.host} is not a public address", refused=True)
                request_headers["Host"] = target.netloc.decode()
                extensions["sni_hostname"] = target.host
                target = target.copy_with(host=address)
            response = self._client.post(target, content=body, headers=request_headers, extensions=extensions)
            return SendResult(status_code=response.status_code)
        except (httpx.HTTPError, httpx.InvalidURL, OSError, UnicodeError) as error:
            return SendResult(error=f"{type(error).__name__}: {error}"[:500])

    def _checked_address(self, host: str, port: int) -> str | None:
        """The address to connect to, or None when any address of the host is forbidden
        (or it resolves to none)."""
        literal = literal_address(host)
        addresses = [str(literal)] if literal is not None else self._resolve(host, port)
        checked = [literal_address(address) for address in addresses]
        if not checked or any(a is None or forbidden_address(a) for a in checked):
            return None
        return addresses[0]

    def close(self) -> None:
        self._client.close()
