"""The AWS blob store: one S3 object per key, optionally under a fixed key prefix.

Writes are all or nothing because S3 only shows an object once its PUT or multipart upload
completes; a failed multipart upload is aborted. Streams go through boto3's managed
transfer, so memory stays near `multipart_chunksize * max_in_memory_upload_chunks` (8 MiB x 4
by default) whatever the blob's size. Keys follow the same rule as every adapter (`check_key`).

Presigned PUT URLs cannot limit the upload's size: S3 checks only the signed headers, and
signing Content-Length would demand one exact size. Where a size limit matters, hand out
`upload_form` instead, a presigned POST whose policy carries `content-length-range`.
Presigning needs a client configured for SigV4 (`signature_version="s3v4"`, as the default
client is); boto3 otherwise still produces SigV2 URLs in us-east-1.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from palette.blobs.port import (
    BlobError,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    InvalidBlobKey,
    check_key,
    check_prefix,
)

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""SigV4 presigned URLs live at most seven days."""
DELETE_BATCH = 1000
"""DeleteObjects takes at most 1000 keys per call."""
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def default_transfer_config() -> TransferConfig:
    """8 MiB parts, 4 in flight, at most 4 read ahead from a stream."""
    config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=4)
    config.max_in_memory_upload_chunks = 4
    return config


@dataclass(frozen=True, slots=True)
class UploadForm:
    """A presigned POST: send `fields` plus the file (last, as form field `file`) to `url`."""

    url: str
    fields: dict[str, str] = field(default_factory=dict)


class S3BlobStore(BlobStore):
    def __init__(
        self,
        bucket: str,
        client: Any | None = None,
        prefix: str = "",
        transfer_config: TransferConfig | None = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", config=Config(signature_version="s3v4"))
        if prefix:
            check_prefix(prefix)
            prefix = prefix if prefix.endswith("/") else f"{prefix}/"
        self.bucket = bucket
        self.prefix = prefix
        self._client = client
        self._transfer = transfer_config or default_transfer_config()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> BlobInfo:
        self._client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentType=content_type)
        return BlobInfo(key=key, size=len(data))

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """S3's conditional write (If-None-Match: *): refused when the object exists."""
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentType=content_type, IfNoneMatch="*"
            )
        except ClientError as error:
            if _error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise
        return True

    def put_stream(
        self, key: str, chunks: Iterable[bytes] | BinaryIO, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        object_key = self._object_key(key)
        if hasattr(chunks, "read") and _seekable(chunks):
            file: BinaryIO = chunks  # type: ignore[assignment]
            start = file.tell()
            size = file.seek(0, io.SEEK_END) - start
            file.seek(start)
            self._upload(file, object_key, content_type)
            return BlobInfo(key=key, size=size)
        reader = ChunkReader(chunks)
        self._upload(reader, object_key, content_type)
        return BlobInfo(key=key, size=reader.bytes_read)

    def get_bytes(self, key: str) -> bytes:
        body = self.open_read(key)
        try:
            return body.read()
        finally:
            body.close()

    def open_read(self, key: str) -> BinaryIO:
        """The object's StreamingBody; close it when done to free the connection."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                raise BlobNotFound(key) from error
            raise
        return response["Body"]

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", ()):
                yield BlobInfo(key=item["Key"][len(self.prefix) :], size=item["Size"])

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidBlobKey("refusing to delete every blob: the prefix is empty")
        deleted = 0
        batch: list[str] = []
        for info in self.list(prefix):
            batch.append(self.prefix + info.key)
            if len(batch) == DELETE_BATCH:
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def discard_partial_writes(self, prefix: str) -> int:
        """Abort the multipart uploads under `prefix` that were never completed (their
        parts are stored, and charged, until aborted)."""
        check_prefix(prefix)
        aborted = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for upload in page.get("Uploads", ()):
                with suppress(ClientError):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def upload_url(self, key: str, expires_in: int = 900, max_bytes: int | None = None) -> str:
        """A presigned PUT. `max_bytes` is NOT enforced by S3 here; use `upload_form` for that."""
        return self._presign("put_object", key, expires_in)

    def download_url(self, key: str, expires_in: int = 900) -> str:
        return self._presign("get_object", key, expires_in)

    def upload_form(self, key: str, max_bytes: int, expires_in: int = 900) -> UploadForm:
        """A presigned POST that S3 itself refuses when the file exceeds `max_bytes`."""
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        post = self._client.generate_presigned_post(
            Bucket=self.bucket,
            Key=self._object_key(key),
            Conditions=[["content-length-range", 0, max_bytes]],
            ExpiresIn=_checked_expiry(expires_in),
        )
        return UploadForm(url=post["url"], fields=dict(post["fields"]))

    def _upload(self, source: BinaryIO | ChunkReader, object_key: str, content_type: str) -> None:
        self._client.upload_fileobj(
            source,
            self.bucket,
            object_key,
            ExtraArgs={"ContentType": content_type},
            Config=self._transfer,
        )

    def _presign(self, operation: str, key: str, expires_in: int) -> str:
        return self._client.generate_presigned_url(
            operation,
            Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=_checked_expiry(expires_in),
        )

    def _delete_batch(self, object_keys: Sequence[str]) -> int:
        response = self._client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in object_keys], "Quiet": True},
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise BlobError(
                f"S3 refused to delete {len(errors)} of {len(object_keys)} blobs, "
                f"first {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )
        return len(object_keys)

    def _object_key(self, key: str) -> str:
        return self.prefix + check_key(key)


class ChunkReader(io.RawIOBase):
    """A read-only, non-seekable file over chunks (an iterable of bytes or another file).

    `read(n)` returns exactly n bytes until the end: boto3 reads each multipart part with a
    single `read`, and S3 refuses parts below 5 MiB except the last. Counts what it hands out.
    """

    def __init__(self, source: Iterable[bytes] | BinaryIO) -> None:
        if hasattr(source, "read"):
            file: BinaryIO = source  # type: ignore[assignment]
            self._chunks: Iterator[bytes] = iter(lambda: file.read(1024 * 1024), b"")
        else:
            self._chunks = iter(source)
        self._pending = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target):
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk).cast("B")
                continue
            n = min(len(self._pending), len(target) - filled)
            target[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        self.bytes_read += filled
        return filled


def _seekable(source: Any) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _checked_expiry(expires_in: int) -> int:
    if not 0 < expires_in <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_in must be between 1 and {MAX_PRESIGN_SECONDS} seconds")
    return int(expires_in)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
