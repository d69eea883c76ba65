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
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from palette.blobs.port import BlobError

SECRET_FILE_NAME = "blob-url-signing.key"
MIN_SECRET_BYTES = 16


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

    def verify(
        self, method: str, key: str, query_params: Mapping[str, str], now: float | None = None
    ) -> SignedGrant:
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
    """The signing secret stored in `data_dir`, created (random, mode 0600) on first use.

    Creation is race-free: the secret is written to a private temp file and hard-linked into
    place, so concurrent first starts agree on one secret and none reads a half-written file.
    A secret file that others can read is refused rather than trusted.
    """
    directory = Path(data_dir)
    path = directory / filename
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{filename}-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secret.hex())
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)
    except FileExistsError:
        return _read_secret(path)
    finally:
        os.unlink(temp)
    return secret


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is accessible to other users; run `chmod 600 {path}`")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        secret = b""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} does not hold a URL signing secret")
    return secret
