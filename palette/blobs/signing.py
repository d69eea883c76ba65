"""Signed blob URLs for the local store: the embedded stand-in for S3 presigned URLs.

A URL grants one HTTP method on one key until a unix time, optionally with a byte limit.
The grant is an HMAC-SHA256 over exactly those four values, so changing any of them (or
using a download URL to upload) fails verification. The secret lives in the data directory,
readable by its owner only, so URLs stay valid across restarts of `palette serve`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from palette.blobs.port import BlobError
from palette.secrets import MIN_SECRET_BYTES
from palette.secrets import load_or_create_secret as _load_secret

SECRET_FILE_NAME = "blob-url-signing.key"


class SignatureInvalid(BlobError):
    """The URL was not signed by us for this method, key and limits (or is malformed)."""


class UrlExpired(BlobError):
    """The URL's signature is genuine but its time is up."""


@dataclass(frozen=True, slots=True)
class SignedGrant:
    """What a verified URL allows: `method` on `key` until `expires`, at most `max_bytes`."""

    method: str
    key: str
    expires: int
    max_bytes: int | None


class UrlSigner:
    """Signs and verifies blob URL grants with one secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a URL signing secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def sign(self, method: str, key: str, expires: int, max_bytes: int | None = None) -> str:
        """The hex HMAC-SHA256 of the grant; the encoding is unambiguous (a JSON array)."""
        message = json.dumps([method.upper(), key, expires, max_bytes], separators=(",", ":"))
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def signed_query(
        self,
        method: str,
        key: str,
        expires_in: int,
        max_bytes: int | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        """Query parameters granting `method` on `key` for `expires_in` seconds from `now`."""
        if expires_in <= 0:
            raise ValueError("expires_in must be a positive number of seconds")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        expires = int(time.time() if now is None else now) + int(expires_in)
        query = {"expires": str(expires)}
        if max_bytes is not None:
            query["max_bytes"] = str(max_bytes)
        query["signature"] = self.sign(method, key, expires, max_bytes)
        return query

    def verify(self, method: str, key: str, query_params: Mapping[str, str], now: float | None = None) -> SignedGrant:
        """The grant the URL carries; raises SignatureInvalid or UrlExpired.

        The signature is checked before the time, so an edited `expires` reads as forged.
        A URL stays valid strictly before its `expires` second.
        """
        expires = _parse_count(query_params.get("expires"), "expires")
        raw_max = query_params.get("max_bytes")
        max_bytes = None if raw_max is None else _parse_count(raw_max, "max_bytes")
        signature = query_params.get("signature", "")
        expected = self.sign(method, key, expires, max_bytes)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise SignatureInvalid(f"the URL's signature does not grant {method.upper()} on {key!r}")
        if (time.time() if now is None else now) >= expires:
            raise UrlExpired(f"the URL for {key!r} expired at {expires}")
        return SignedGrant(method=method.upper(), key=key, expires=expires, max_bytes=max_bytes)


def _parse_count(value: str | None, name: str) -> int:
    if value is None or not value.isascii() or not value.isdigit():
        raise SignatureInvalid(f"the URL's {name!r} parameter is missing or not a whole number")
    return int(value)


def load_or_create_secret(data_dir: Path | str, filename: str = SECRET_FILE_NAME) -> bytes:
    """The URL signing secret of a data directory (see palette.secrets)."""
    return _load_secret(data_dir, filename)
