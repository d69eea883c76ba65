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


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int


class BlobStore(ABC):
    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> BlobInfo:
        """Store `data` at `key`, replacing any blob there."""

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
    def upload_url(self, key: str, expires_in: int = 900, max_bytes: int | None = None) -> str:
        """A URL that accepts one HTTP PUT of the blob until it expires (S3: presigned;
        local: signed URL to the facade, checked by `verify_upload_url`)."""

    @abstractmethod
    def download_url(self, key: str, expires_in: int = 900) -> str:
        """A URL to GET the blob until it expires."""
