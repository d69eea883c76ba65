"""The blob store contract, run on every adapter: the local folder and S3 (under moto).

Signed and presigned URLs are proven for real: the local signer is checked against every
kind of tampering, and S3 presigned URLs are used over HTTP against a moto server.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import stat
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from moto import mock_aws
from moto.server import ThreadedMotoServer

from palette.blobs import s3 as s3_module
from palette.blobs.local import TEMP_MARK, LocalBlobStore
from palette.blobs.port import BlobInfo, BlobNotFound, BlobStore, BlobTooLarge, InvalidBlobKey
from palette.blobs.s3 import S3BlobStore
from palette.blobs.signing import SignatureInvalid, UrlExpired, UrlSigner, load_or_create_secret

BUCKET = "palette-blobs"
MiB = 1024 * 1024
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
"""S3's smallest part size, so multi-MB test streams really go through multipart uploads."""


class Interrupted(Exception):
    pass


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(b"contract-test-secret-0123456789ab")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, signer: UrlSigner) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs", signer, "http://127.0.0.1:8000")
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield S3BlobStore(BUCKET, client, transfer_config=SMALL_PARTS)


def _chunks(total: int, chunk_size: int, seed: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """`total` pseudo-random bytes in chunks, hashed into `digest` as they are produced."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        chunk = rng.randbytes(min(chunk_size, total - sent))
        digest.update(chunk)
        sent += len(chunk)
        yield chunk


def _sha256_of_stream(stream: BinaryIO | io.IOBase, chunk_size: int = MiB) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(chunk_size):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class _TrickleReader(io.RawIOBase):
    """A non-seekable file that hands out at most 1000 bytes per read, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), 1000, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


# --- writes and reads -------------------------------------------------------------------


def test_round_trip_keeps_bytes_exact(store: BlobStore) -> None:
    data = bytes(range(256)) * 17 + b"\x00\r\n"
    assert store.put_bytes("seed-data/u1/s1/seeds.jsonl", data) == BlobInfo("seed-data/u1/s1/seeds.jsonl", len(data))
    assert store.get_bytes("seed-data/u1/s1/seeds.jsonl") == data


def test_empty_blob_is_a_blob(store: BlobStore) -> None:
    store.put_bytes("empty", b"")
    assert store.exists("empty")
    assert store.get_bytes("empty") == b""
    assert list(store.list("empty")) == [BlobInfo("empty", 0)]


def test_unicode_and_spaces_in_keys(store: BlobStore) -> None:
    key = "exports/jöb 1/données été.csv"
    store.put_bytes(key, b"a,b\n")
    assert store.get_bytes(key) == b"a,b\n"
    assert [info.key for info in store.list("exports/")] == [key]


def test_streaming_write_and_read_of_many_megabytes(store: BlobStore) -> None:
    written = hashlib.sha256()
    total = 12 * MiB + 12345
    info = store.put_stream("datasets/job-1/batch-0001.parquet", _chunks(total, 64 * 1024, 7, written))
    assert info == BlobInfo("datasets/job-1/batch-0001.parquet", total)
    stream = store.open_read("datasets/job-1/batch-0001.parquet")
    try:
        assert _sha256_of_stream(stream) == (written.hexdigest(), total)
    finally:
        stream.close()


def test_streaming_write_from_file_objects(store: BlobStore) -> None:
    data = random.Random(3).randbytes(6 * MiB + 1)
    seekable = io.BytesIO(b"skipped" + data)
    seekable.seek(len(b"skipped"))
    assert store.put_stream("from-file", seekable) == BlobInfo("from-file", len(data))
    assert store.get_bytes("from-file") == data

    assert store.put_stream("from-socket", _TrickleReader(data)) == BlobInfo("from-socket", len(data))
    assert store.get_bytes("from-socket") == data


def test_interrupted_stream_leaves_the_old_blob(store: BlobStore) -> None:
    store.put_bytes("datasets/job-1/part", b"old")

    def breaks_midway() -> Iterator[bytes]:
        yield from _chunks(6 * MiB, MiB, 1, hashlib.sha256())
        raise Interrupted

    with pytest.raises(Interrupted):
        store.put_stream("datasets/job-1/part", breaks_midway())
    assert store.get_bytes("datasets/job-1/part") == b"old"
    assert list(store.list("datasets/")) == [BlobInfo("datasets/job-1/part", 3)]


def test_overwrite_replaces_the_blob(store: BlobStore) -> None:
    store.put_bytes("k", b"first version")
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"
    assert list(store.list("")) == [BlobInfo("k", 6)]


def test_put_if_absent_stores_only_the_first(store: BlobStore) -> None:
    assert store.put_bytes_if_absent("secrets/one", b"first") is True
    assert store.put_bytes_if_absent("secrets/one", b"second") is False
    assert store.get_bytes("secrets/one") == b"first"
    assert [info.key for info in store.list("secrets/")] == ["secrets/one"]


def test_exists(store: BlobStore) -> None:
    assert not store.exists("a/b")
    store.put_bytes("a/b", b"x")
    assert store.exists("a/b")
    assert not store.exists("a")
    assert not store.exists("a/bc")


def test_missing_blob_raises_blob_not_found(store: BlobStore) -> None:
    store.put_bytes("present/x", b"x")
    with pytest.raises(BlobNotFound):
        store.get_bytes("absent")
    with pytest.raises(BlobNotFound):
        store.open_read("absent")
    with pytest.raises(KeyError):
        store.get_bytes("present")


# --- listing ----------------------------------------------------------------------------

LISTED = {
    "a/b/1": 1,
    "a/b/2/x": 2,
    "a/bc": 3,
    "a/b.txt": 4,
    "a/b-": 5,
    "a.b": 6,
    "a/a": 7,
    "b": 8,
}


def test_list_by_prefix_in_key_order_with_sizes(store: BlobStore) -> None:
    for key, size in reversed(LISTED.items()):
        store.put_bytes(key, b"z" * size)

    assert list(store.list()) == [BlobInfo(k, LISTED[k]) for k in sorted(LISTED)]
    assert [i.key for i in store.list("a/b")] == ["a/b-", "a/b.txt", "a/b/1", "a/b/2/x", "a/bc"]
    assert [i.key for i in store.list("a/b/")] == ["a/b/1", "a/b/2/x"]
    assert [i.key for i in store.list("a/bc")] == ["a/bc"]
    assert [i.key for i in store.list("a")] == ["a.b", "a/a", "a/b-", "a/b.txt", "a/b/1", "a/b/2/x", "a/bc"]
    assert list(store.list("a/b/2/x/")) == []
    assert list(store.list("zzz")) == []


# --- deleting ---------------------------------------------------------------------------


def test_delete_removes_one_blob_and_tolerates_missing(store: BlobStore) -> None:
    store.put_bytes("d/one", b"1")
    store.put_bytes("d/two", b"2")
    store.delete("d/one")
    assert not store.exists("d/one")
    with pytest.raises(BlobNotFound):
        store.get_bytes("d/one")
    store.delete("d/one")
    store.delete("never/was")
    assert list(store.list("d/")) == [BlobInfo("d/two", 1)]


def test_delete_prefix_counts_and_stays_inside_the_prefix(store: BlobStore) -> None:
    for key in ["job/1/a", "job/1/b/c", "job/1/d", "job/10/a", "job/10/b", "job/2/a", "jobs"]:
        store.put_bytes(key, key.encode())

    assert store.delete_prefix("job/1/") == 3
    assert [i.key for i in store.list()] == ["job/10/a", "job/10/b", "job/2/a", "jobs"]
    assert store.delete_prefix("job/1/") == 0
    assert store.delete_prefix("nothing/") == 0
    assert store.delete_prefix("job/1") == 2
    assert [i.key for i in store.list()] == ["job/2/a", "jobs"]
    with pytest.raises(InvalidBlobKey):
        store.delete_prefix("")
    assert [i.key for i in store.list()] == ["job/2/a", "jobs"]


# --- keys -------------------------------------------------------------------------------

INVALID_KEYS = [
    "",
    "/etc/passwd",
    "..",
    "a/../../b",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\nb",
    "x" * 256,
    "a\udc80",
]


def test_invalid_keys_are_rejected_by_every_operation(store: BlobStore) -> None:
    operations: dict[str, Callable[[str], object]] = {
        "put_bytes": lambda key: store.put_bytes(key, b"x"),
        "put_stream": lambda key: store.put_stream(key, [b"x"]),
        "get_bytes": store.get_bytes,
        "open_read": store.open_read,
        "exists": store.exists,
        "delete": store.delete,
        "upload_url": store.upload_url,
        "download_url": store.download_url,
    }
    for key in INVALID_KEYS:
        for name, operation in operations.items():
            with pytest.raises(InvalidBlobKey):
                operation(key)
                pytest.fail(f"{name} accepted {key!r}")
    assert list(store.list()) == []


def test_invalid_prefixes_are_rejected(store: BlobStore) -> None:
    for prefix in ["/", "/a", "../", "a/../", "a//", "a\\"]:
        with pytest.raises(InvalidBlobKey):
            list(store.list(prefix))
        with pytest.raises(InvalidBlobKey):
            store.delete_prefix(prefix)


# --- the local adapter's own guarantees -------------------------------------------------


@pytest.fixture
def local(tmp_path: Path, signer: UrlSigner) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", signer, "http://127.0.0.1:8000/")


def test_local_keys_stay_inside_the_root(local: LocalBlobStore, tmp_path: Path) -> None:
    local.put_bytes("seed-data/u/s/f.jsonl", b"{}")
    assert (tmp_path / "blobs" / "seed-data" / "u" / "s" / "f.jsonl").read_bytes() == b"{}"
    with pytest.raises(InvalidBlobKey):
        local.put_bytes(f"a/{TEMP_MARK}x", b"x")


def test_local_refuses_a_key_that_is_also_a_folder(local: LocalBlobStore) -> None:
    local.put_bytes("a/b", b"file")
    with pytest.raises(InvalidBlobKey):
        local.put_bytes("a/b/c", b"under a file")
    with pytest.raises(InvalidBlobKey):
        local.put_bytes("a", b"over a folder")
    assert [i.key for i in local.list()] == ["a/b"]
    assert not local.exists("a")


def test_local_leaves_no_temp_files_or_empty_folders(local: LocalBlobStore, tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    local.put_bytes("keep/x", b"x")
    for key in ["job/1/a/b", "job/1/c", "job/2/d"]:
        local.put_bytes(key, b"y")
    with pytest.raises(Interrupted):
        local.put_stream("job/3/e", (b"y" if i < 3 else _raise(Interrupted()) for i in range(5)))

    local.delete("job/2/d")
    assert local.delete_prefix("job/") == 2
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["keep", "keep/x"]


def _raise(error: Exception) -> bytes:
    raise error


def test_local_streaming_write_and_read_keep_memory_bounded(local: LocalBlobStore) -> None:
    chunk = b"\xab" * (256 * 1024)
    total = 64 * MiB
    tracemalloc.start()
    try:
        local.put_stream("big", (chunk for _ in range(total // len(chunk))))
        with local.open_read("big") as stream:
            size = 0
            while block := stream.read(256 * 1024):
                size += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == total
    assert peak < 4 * MiB


# --- upload and download URLs -----------------------------------------------------------


def _key_and_query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    assert parts.path.startswith("/blobs/")
    return unquote(parts.path.removeprefix("/blobs/")), dict(parse_qsl(parts.query))


def test_local_upload_url_grants_one_put_on_one_key(local: LocalBlobStore, signer: UrlSigner) -> None:
    key = "seed-data/u 1/s1/seeds.jsonl"
    before = int(time.time())
    url = local.upload_url(key, expires_in=900, max_bytes=1000)
    assert url.startswith("http://127.0.0.1:8000/blobs/seed-data/u%201/s1/seeds.jsonl?expires=")
    url_key, query = _key_and_query(url)
    assert url_key == key
    assert list(query) == ["expires", "max_bytes", "signature"]
    assert before + 900 <= int(query["expires"]) <= int(time.time()) + 900

    grant = local.verify_upload_url(key, query)
    assert (grant.method, grant.key, grant.max_bytes) == ("PUT", key, 1000)
    assert signer.verify("PUT", key, query) == grant

    with pytest.raises(SignatureInvalid):
        signer.verify("PUT", "seed-data/u 1/s1/other.jsonl", query)
    with pytest.raises(SignatureInvalid):
        signer.verify("GET", key, query)
    with pytest.raises(SignatureInvalid):
        signer.verify("PUT", key, {**query, "max_bytes": "1000000"})
    with pytest.raises(SignatureInvalid):
        signer.verify("PUT", key, {k: v for k, v in query.items() if k != "max_bytes"})
    with pytest.raises(SignatureInvalid):
        signer.verify("PUT", key, {**query, "expires": str(int(query["expires"]) + 3600)})
    with pytest.raises(SignatureInvalid):
        signer.verify("PUT", key, {**query, "signature": "0" * 64})
    with pytest.raises(SignatureInvalid):
        signer.verify("PUT", key, {"expires": query["expires"]})
    with pytest.raises(SignatureInvalid):
        UrlSigner(b"another-secret-0123456789abcdef").verify("PUT", key, query)
    with pytest.raises(UrlExpired):
        signer.verify("PUT", key, query, now=int(query["expires"]))
    with pytest.raises(UrlExpired):
        local.verify_upload_url(key, query, now=int(query["expires"]) + 1)


def test_local_download_url_grants_get_only(local: LocalBlobStore, signer: UrlSigner) -> None:
    local.put_bytes("exports/job/data.csv", b"a\n")
    key, query = _key_and_query(local.download_url("exports/job/data.csv", expires_in=60))
    assert "max_bytes" not in query
    assert local.verify_download_url(key, query).method == "GET"
    with pytest.raises(SignatureInvalid):
        local.verify_upload_url(key, query)
    with pytest.raises(UrlExpired):
        local.verify_download_url(key, query, now=time.time() + 61)


def test_local_accept_upload_enforces_the_signed_limit(local: LocalBlobStore) -> None:
    key = "seed-data/u/s/seeds.jsonl"
    _, query = _key_and_query(local.upload_url(key, max_bytes=10))
    assert local.accept_upload(key, query, io.BytesIO(b"0123456789")) == BlobInfo(key, 10)
    with pytest.raises(BlobTooLarge):
        local.accept_upload(key, query, iter([b"01234", b"56789", b"!"]))
    assert local.get_bytes(key) == b"0123456789"
    with pytest.raises(SignatureInvalid):
        local.accept_upload("seed-data/u/s/other.jsonl", query, [b"x"])
    assert [i.key for i in local.list()] == [key]


def test_signing_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "data")
    files = list((tmp_path / "data").iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "data") == first
    assert len(first) >= 32

    os.chmod(files[0], 0o644)
    with pytest.raises(PermissionError):
        load_or_create_secret(tmp_path / "data")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_over_http(moto_endpoint: str, request: pytest.FixtureRequest) -> S3BlobStore:
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    bucket = f"presign-{request.node.name.lower().replace('_', '-')}"[:63]
    client.create_bucket(Bucket=bucket)
    return S3BlobStore(bucket, client, prefix="tenant")


def test_s3_presigned_put_and_get_over_http(s3_over_http: S3BlobStore) -> None:
    key = "seed-data/u1/s1/seeds.jsonl"
    data = b'{"topic": "rivers"}\n' * 1000
    upload = s3_over_http.upload_url(key)
    assert "X-Amz-Expires=900" in upload

    response = httpx.put(upload, content=data)
    assert response.status_code == 200, response.text
    assert s3_over_http.get_bytes(key) == data
    assert list(s3_over_http.list("seed-data/")) == [BlobInfo(key, len(data))]

    download = httpx.get(s3_over_http.download_url(key, expires_in=60))
    assert download.status_code == 200
    assert download.content == data


def test_s3_presigned_post_form_uploads_within_its_limit(s3_over_http: S3BlobStore) -> None:
    """The happy path only: moto accepts oversized POSTs, real S3 answers EntityTooLarge."""
    key = "seed-data/u1/s2/seeds.jsonl"
    form = s3_over_http.upload_form(key, max_bytes=1024)
    response = httpx.post(form.url, data=form.fields, files={"file": ("seeds.jsonl", b"{}\n" * 10)})
    assert response.status_code in (200, 201, 204), response.text
    assert s3_over_http.get_bytes(key) == b"{}\n" * 10


# --- the S3 adapter's own guarantees ----------------------------------------------------


@pytest.fixture
def s3_client() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_s3_prefix_isolates_the_store_within_a_shared_bucket(s3_client: object) -> None:
    tenant = S3BlobStore(BUCKET, s3_client, prefix="tenant-a")
    whole = S3BlobStore(BUCKET, s3_client)
    whole.put_bytes("outside", b"o")
    whole.put_bytes("tenant-ab/x", b"o")
    tenant.put_bytes("job/x", b"in")

    assert [i.key for i in whole.list()] == ["outside", "tenant-a/job/x", "tenant-ab/x"]
    assert list(tenant.list()) == [BlobInfo("job/x", 2)]
    assert tenant.delete_prefix("job") == 1
    assert [i.key for i in whole.list()] == ["outside", "tenant-ab/x"]


def test_s3_default_client_presigns_with_sigv4(s3_client: object) -> None:
    url = S3BlobStore(BUCKET).upload_url("k", expires_in=60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    with pytest.raises(ValueError):
        S3BlobStore(BUCKET).download_url("k", expires_in=8 * 24 * 3600)


def test_s3_delete_prefix_batches_within_the_1000_key_limit(s3_client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    assert s3_module.DELETE_BATCH == 1000
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 3)
    store = S3BlobStore(BUCKET, s3_client)
    for n in range(7):
        store.put_bytes(f"many/{n:04d}", b"")
    store.put_bytes("manx", b"")
    batch_sizes: list[int] = []
    s3_client.meta.events.register(  # type: ignore[attr-defined]
        "provide-client-params.s3.DeleteObjects",
        lambda params, **_: batch_sizes.append(len(params["Delete"]["Objects"])),
    )

    assert store.delete_prefix("many/") == 7
    assert batch_sizes == [3, 3, 1]
    assert [i.key for i in store.list()] == ["manx"]


def test_discarding_partial_writes_removes_only_those_under_the_prefix(store: BlobStore, tmp_path: Path) -> None:
    """A writer killed mid-write leaves its partial write behind (a local temp file, an S3
    multipart upload never completed); `discard_partial_writes` removes them under a prefix
    and touches no blob and nothing outside it."""
    store.put_bytes("datasets/u/j1/parts/part-000000.parquet", b"done")
    store.put_bytes("datasets/u/j2/parts/part-000000.parquet", b"other job")
    if isinstance(store, LocalBlobStore):
        for folder in ("datasets/u/j1/parts", "datasets/u/j1/export", "datasets/u/j2/parts"):
            (tmp_path / "blobs" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "blobs" / folder / f"{TEMP_MARK}killed").write_bytes(b"half")
    else:
        client = store._client  # type: ignore[attr-defined]
        for key in (
            "datasets/u/j1/parts/part-000001.parquet",
            "datasets/u/j1/export/data.csv",
            "datasets/u/j2/parts/part-000001.parquet",
        ):
            client.create_multipart_upload(Bucket=BUCKET, Key=key)

    assert store.discard_partial_writes("datasets/u/j1/") == 2

    assert [i.key for i in store.list("datasets/")] == [
        "datasets/u/j1/parts/part-000000.parquet",
        "datasets/u/j2/parts/part-000000.parquet",
    ]
    if isinstance(store, LocalBlobStore):
        left = sorted(str(p.relative_to(tmp_path / "blobs")) for p in (tmp_path / "blobs").rglob(f"{TEMP_MARK}*"))
        assert left == [f"datasets/u/j2/parts/{TEMP_MARK}killed"]
        assert not (tmp_path / "blobs" / "datasets/u/j1/export").exists()
    else:
        uploads = store._client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])  # type: ignore[attr-defined]
        assert [u["Key"] for u in uploads] == ["datasets/u/j2/parts/part-000001.parquet"]
    assert store.discard_partial_writes("datasets/u/j1/") == 0
