"""The embedded blob store: one file per key under a root folder.

Writes are all or nothing: bytes go to a temp file in the blob's own folder, are fsynced,
then `os.replace`d over the key, so a reader sees the old blob or the new one, never a
mix. Streams are copied chunk by chunk. Temp files carry a reserved name that no valid
key can have, so listings never show them; a writer killed mid-write leaves its temp file
behind until `discard_partial_writes` removes it. Folders emptied by deletes are removed.

Upload and download URLs point at the REST facade (`<base_url>/blobs/<key>?...`) and are
signed by `UrlSigner`; the facade checks them with `verify_upload_url` /
`verify_download_url` and stores uploads through `accept_upload`, which enforces the
signed byte limit.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from palette.blobs.port import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    InvalidBlobKey,
    check_key,
    check_prefix,
)
from palette.blobs.signing import SignedGrant, UrlSigner

TEMP_MARK = ".palette-partial-"
"""Start of every temp file's name; keys with a segment starting with it are refused."""

COPY_CHUNK_BYTES = 1024 * 1024


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path | str, signer: UrlSigner, base_url: str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signer = signer
        self._base_url = base_url.rstrip("/")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> BlobInfo:
        return self._write(key, (data,))

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """A hard link of a complete temp file: linking fails, atomically, when the key exists."""
        path = self._path(key)
        fd, temp = self._temp_file_beside(key, path)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            _fsync_folder(path.parent)
            return True
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temp)

    def put_stream(
        self, key: str, chunks: Iterable[bytes] | BinaryIO, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        return self._write(key, _chunks_of(chunks))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as blob:
            return blob.read()

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        check_prefix(prefix)
        head, _, start = prefix.rpartition("/")
        folder = self.root.joinpath(*head.split("/")) if head else self.root
        yield from _walk(folder, f"{head}/" if head else "", start)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        self._remove_empty_folders(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidBlobKey("refusing to delete every blob: the prefix is empty")
        deleted = 0
        for info in self.list(prefix):
            path = self.root.joinpath(*info.key.split("/"))
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            deleted += 1
            self._remove_empty_folders(path.parent)
        return deleted

    def discard_partial_writes(self, prefix: str) -> int:
        check_prefix(prefix)
        head, _, start = prefix.rpartition("/")
        top = self.root.joinpath(*head.split("/")) if head else self.root
        emptied: list[Path] = []
        for folder, subfolders, names in os.walk(top):
            here = Path(folder)
            if here == top:
                subfolders[:] = [name for name in subfolders if name.startswith(start)]
                names = [name for name in names if name.startswith(start)]
            for name in names:
                if name.startswith(TEMP_MARK):
                    with suppress(FileNotFoundError):
                        (here / name).unlink()
                        emptied.append(here)
        for emptied_folder in sorted(set(emptied), key=lambda path: len(path.parts), reverse=True):
            self._remove_empty_folders(emptied_folder)
        return len(emptied)

    def upload_url(self, key: str, expires_in: int = 900, max_bytes: int | None = None) -> str:
        return self._signed_url("PUT", key, expires_in, max_bytes)

    def download_url(self, key: str, expires_in: int = 900) -> str:
        return self._signed_url("GET", key, expires_in, None)

    def verify_upload_url(self, key: str, query_params: Mapping[str, str], now: float | None = None) -> SignedGrant:
        """The grant of an `upload_url`; raises SignatureInvalid or UrlExpired."""
        return self._signer.verify("PUT", check_key(key), query_params, now)

    def verify_download_url(self, key: str, query_params: Mapping[str, str], now: float | None = None) -> SignedGrant:
        """The grant of a `download_url`; raises SignatureInvalid or UrlExpired."""
        return self._signer.verify("GET", check_key(key), query_params, now)

    def accept_upload(
        self,
        key: str,
        query_params: Mapping[str, str],
        body: Iterable[bytes] | BinaryIO,
        now: float | None = None,
    ) -> BlobInfo:
        """Store the body of a PUT to an `upload_url`, within its signed byte limit.

        Raises SignatureInvalid or UrlExpired before reading the body, and BlobTooLarge as
        soon as the limit is passed; in every failure the previous blob (if any) is untouched.
        """
        grant = self.verify_upload_url(key, query_params, now)
        return self._write(key, _chunks_of(body), grant.max_bytes)

    def _signed_url(self, method: str, key: str, expires_in: int, max_bytes: int | None) -> str:
        check_key(key)
        query = self._signer.signed_query(method, key, expires_in, max_bytes)
        return f"{self._base_url}/blobs/{quote(key, safe='/')}?{urlencode(query)}"

    def _path(self, key: str) -> Path:
        segments = check_key(key).split("/")
        if any(segment.startswith(TEMP_MARK) for segment in segments):
            raise InvalidBlobKey(f"blob key {key!r} uses the reserved name {TEMP_MARK!r}")
        return self.root.joinpath(*segments)

    def _write(self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        path = self._path(key)
        fd, temp = self._temp_file_beside(key, path)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobTooLarge(f"upload to {key!r} is larger than {max_bytes} bytes")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.replace(temp, path)
            except IsADirectoryError:
                raise InvalidBlobKey(f"blob key {key!r} is already a prefix of other blobs") from None
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temp)
            self._remove_empty_folders(path.parent)
            raise
        _fsync_folder(path.parent)
        return BlobInfo(key=key, size=size)

    def _temp_file_beside(self, key: str, path: Path) -> tuple[int, str]:
        """A new temp file in the blob's folder; retried because a concurrent delete may
        remove a folder between its creation and the temp file's."""
        for _attempt in range(5):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                return tempfile.mkstemp(dir=path.parent, prefix=TEMP_MARK)
            except (FileExistsError, NotADirectoryError):
                raise InvalidBlobKey(f"blob key {key!r} lies under an existing blob") from None
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"could not create the folder for blob {key!r}")

    def _remove_empty_folders(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _walk(folder: Path, key_base: str, name_start: str) -> Iterator[BlobInfo]:
    """Regular files under `folder`, in key order: a sub-folder `d` sorts as `d/`, which
    places its keys exactly where a flat sort of full keys would."""
    try:
        with os.scandir(folder) as scan:
            entries = [
                (entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name, entry)
                for entry in scan
                if entry.name.startswith(name_start) and not entry.name.startswith(TEMP_MARK)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return
    entries.sort(key=lambda pair: pair[0])
    for sort_name, entry in entries:
        if sort_name.endswith("/"):
            yield from _walk(Path(entry.path), f"{key_base}{sort_name}", "")
        elif entry.is_file(follow_symlinks=False):
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            yield BlobInfo(key=f"{key_base}{entry.name}", size=size)


def _chunks_of(source: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
    if hasattr(source, "read"):
        reader: BinaryIO = source  # type: ignore[assignment]
        while chunk := reader.read(COPY_CHUNK_BYTES):
            yield chunk
    else:
        yield from source


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
