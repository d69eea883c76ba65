"""The blob store port: seeds, dataset batches, exports and oversize event payloads.

Keys are '/'-separated paths (`seed-data/<user>/<seed id>/<file>`). Writes are all or
nothing: a reader never sees half a blob (local: write to a temp file, then rename; S3:
a PUT or a completed multipart upload).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO


class BlobError(Exception):
    """Base of every blob store failure."""


class BlobNotFound(BlobError, KeyError):
    """No blob at that key."""


class InvalidBlobKey(BlobError, ValueError):
    """A key that is empty, absolute, or climbs out of the store ('..')."""


class BlobTooLarge(BlobError):
    """An upload went past the byte limit it was granted; nothing was stored."""


MAX_KEY_BYTES = 1024
"""S3's limit on a whole key (UTF-8)."""
MAX_SEGMENT_BYTES = 255
"""Common file systems' limit on one path segment (UTF-8)."""


def _check_segment(segment: str, whole: str) -> None:
    if segment in ("", ".", ".."):
        raise InvalidBlobKey(f"blob key {whole!r} has an empty, '.' or '..' segment")
    if len(segment.encode()) > MAX_SEGMENT_BYTES:
        raise InvalidBlobKey(f"blob key {whole!r} has a segment longer than {MAX_SEGMENT_BYTES} bytes")


def _check_characters(text: str) -> None:
    if "\\" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidBlobKey(f"blob key {text!r} contains a backslash or a control character")
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        raise InvalidBlobKey(f"blob key {text!r} is not valid Unicode text") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidBlobKey(f"blob key {text[:40]!r}... is longer than {MAX_KEY_BYTES} bytes")


def check_key(key: str) -> str:
    """Return `key` unchanged if every adapter can store it, else raise InvalidBlobKey.

    One rule for all adapters, so a key that works on the local store works on S3: non-empty
    '/'-separated segments, none empty, '.' or '..' (so no leading, trailing or double '/'),
    no backslash or control character, within S3's and file systems' length limits.
    """
    if not isinstance(key, str) or not key:
        raise InvalidBlobKey("blob key is empty")
    _check_characters(key)
    for segment in key.split("/"):
        _check_segment(segment, key)
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` unchanged if it can start a valid key ('' does), else raise InvalidBlobKey.

    Every complete segment (before the last '/') follows `check_key`'s rule; the trailing
    part may be any start of a segment.
    """
    if not isinstance(prefix, str):
        raise InvalidBlobKey("blob prefix must be a string")
    _check_characters(prefix)
    head, _, _ = prefix.rpartition("/")
    if head or prefix.startswith("/"):
        for segment in head.split("/"):
            _check_segment(segment, prefix)
    return prefix


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int


class BlobStore(ABC):
    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> BlobInfo:
        """Store `data` at `key`, replacing any blob there."""

    @abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """Store `data` at `key` only when no blob is there; True when this call stored it.
        Of writers racing on one key exactly one stores (a keyed create's first secret)."""

    @abstractmethod
    def put_stream(
        self, key: str, chunks: Iterable[bytes] | BinaryIO, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        """Store a stream without holding it in memory."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole blob; raises BlobNotFound."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A binary file object to stream the blob from; raises BlobNotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Blobs whose key starts with `prefix`, in key order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one blob; deleting a missing blob is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under `prefix`; returns how many. An empty prefix is refused."""

    @abstractmethod
    def discard_partial_writes(self, prefix: str) -> int:
        """Remove what writers killed mid-write left under `prefix` (local: temp files; S3:
        multipart uploads never completed), never a blob; returns how many. Call it only
        where no live writer works under the prefix: a writer's own partial write would go."""

    @abstractmethod
    def upload_url(self, key: str, expires_in: int = 900, max_bytes: int | None = None) -> str:
        """A URL that accepts one HTTP PUT of the blob until it expires (S3: presigned;
        local: signed URL to the facade, checked by `verify_upload_url`)."""

    @abstractmethod
    def download_url(self, key: str, expires_in: int = 900) -> str:
        """A URL to GET the blob until it expires."""
