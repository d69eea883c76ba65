"""Malformed input against `palette serve` over real HTTP: every case answers a 4xx in the
error shape, never a 500 or a plain-text "Internal Server Error"."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.serving import UNLIMITED, Served, start_serve, stop_serve

DEEP = 5_000
DEEPEST = 100_000
HUGE = "9" * 5_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("malformed")
    (data_dir / "guard.json").write_text(json.dumps(UNLIMITED))
    running = start_serve(data_dir)
    yield running
    stop_serve(running)


@pytest.fixture(scope="module")
def alice(served: Served) -> Iterator[httpx.Client]:
    with served.client("alice") as client:
        yield client


def assert_error_shape(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["meta"]["request_id"] == response.headers["x-request-id"]
    return body


JSON = {"content-type": "application/json"}
BODY_ROUTES = ["/jobs", "/templates", "/templates/enhance", "/seed-data/upload", "/seed-data/validate"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_utf16_or_utf32_body_answers_400(alice: httpx.Client, encoding: str) -> None:
    body = json.dumps({"name": "x", "steps": []}).encode(encoding)
    assert_error_shape(alice.post("/templates", content=body, headers=JSON), 400, "VALIDATION_ERROR")


def test_a_utf8_body_with_a_bom_answers_400(alice: httpx.Client) -> None:
    body = b"\xef\xbb\xbf" + json.dumps({"name": "x"}).encode()
    assert_error_shape(alice.post("/templates", content=body, headers=JSON), 400, "VALIDATION_ERROR")


def test_invalid_utf8_answers_400(alice: httpx.Client) -> None:
    assert_error_shape(alice.post("/jobs", content=b'{"name": "\xff\xfe"}', headers=JSON), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "text/plain; charset=utf-8", "multipart/form-data"]
)
@pytest.mark.parametrize("path", ["/jobs", "/templates"])
def test_json_sent_as_another_media_type_answers_415(alice: httpx.Client, path: str, content_type: str) -> None:
    body = assert_error_shape(
        alice.post(path, content=b'{"name": "x"}', headers={"content-type": content_type}),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    assert "application/json" in body["error"]["details"]["accepted"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
        None,
    ],
)
def test_json_media_types_and_a_missing_one_reach_validation(alice: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = alice.build_request("POST", "/jobs", content=b'{"name": "x"}', headers=headers)
    assert request.headers.get("content-type") == content_type
    body = assert_error_shape(alice.send(request), 400, "VALIDATION_ERROR")
    assert "template_id" in body["error"]["message"]


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_answers_400_on_every_body_route(alice: httpx.Client, path: str, opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    body = (opening * DEEP + "1" + closing * DEEP).encode()
    reply = assert_error_shape(alice.post(path, content=body, headers=JSON), 400, "VALIDATION_ERROR")
    assert reply["error"]["details"]["max_depth"] == 64


def test_the_deepest_nesting_the_body_cap_allows_answers_400(alice: httpx.Client) -> None:
    body = ("[" * DEEPEST + "]" * DEEPEST).encode()
    assert_error_shape(alice.post("/jobs", content=body, headers=JSON), 400, "VALIDATION_ERROR")


def test_brackets_inside_strings_do_not_count_as_nesting(alice: httpx.Client) -> None:
    body = json.dumps({"name": "[" * 1000, "template_id": "t"}).encode()
    reply = assert_error_shape(alice.post("/jobs", content=body, headers=JSON), 400, "VALIDATION_ERROR")
    assert "num_records" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", '{"template_id": "t", "seed_id": "s", "num_records": %s, "budget_limit": 1}'),
        ("/jobs", '{"template_id": "t", "seed_id": "s", "num_records": 1, "budget_limit": %s}'),
        ("/jobs", '{"template_id": "t", "seed_id": "s", "num_records": 1, "budget_limit": 0.%s}'),
        ("/seed-data/upload", '{"filename": "a.csv", "format": "csv", "size_bytes": %s}'),
        ("/templates", '{"name": "t", "steps": [], "x": -%s}'),
    ],
)
def test_a_number_of_5000_digits_answers_400(alice: httpx.Client, path: str, body: str) -> None:
    reply = assert_error_shape(alice.post(path, content=(body % HUGE).encode(), headers=JSON), 400, "VALIDATION_ERROR")
    assert reply["error"]["details"]["max_digits"] == 100


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1E+400", "0.5e99999"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", '{"template_id": "t", "seed_id": "s", "num_records": 1, "budget_limit": %s}'),
        (
            "/templates",
            '{"name": "t", "steps": [{"id": "a", "model": "openai/m", "prompt": "p",'
            ' "parameters": {"temperature": %s}}]}',
        ),
        ("/templates", '{"name": "t", "steps": [{"id": "a", "model": "openai/m", "prompt": "p"}], "x": [%s]}'),
    ],
)
def test_a_non_finite_number_answers_400(alice: httpx.Client, path: str, body: str, number: str) -> None:
    """Python's parser reads NaN, Infinity and 1e999 (as inf); strict JSON has none of them."""
    sent = alice.post(path, content=(body % number).encode(), headers=JSON)
    reply = assert_error_shape(sent, 400, "VALIDATION_ERROR")
    assert reply["error"]["details"]["errors"][0]["type"] == "non_finite_number"


def test_nan_inside_a_string_is_text(alice: httpx.Client) -> None:
    steps = [{"id": "a", "model": "openai/m", "prompt": "NaN Infinity 1e999"}]
    assert alice.post("/templates", json={"name": "NaN", "steps": steps}).status_code == 201


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/templates/tpl_x", "DELETE, GET, PUT"),
        ("POST", "/templates/tpl_x", "DELETE, GET, PUT"),
        ("DELETE", "/templates", "GET, POST"),
        ("PUT", "/jobs", "GET, POST"),
        ("POST", "/costs", "GET"),
        ("PATCH", "/health", "GET"),
    ],
)
def test_a_method_the_path_does_not_take_answers_405_with_allow(
    alice: httpx.Client, method: str, path: str, allowed: str
) -> None:
    reply = assert_error_shape(alice.request(method, path, json={}), 405, "METHOD_NOT_ALLOWED")
    assert reply["error"]["details"] == {"method": method, "allowed": allowed.split(", ")}
    assert alice.request(method, path, json={}).headers["allow"] == allowed


def test_head_of_a_get_route_answers_405_with_allow_and_no_body(alice: httpx.Client) -> None:
    reply = alice.head("/templates")
    assert (reply.status_code, reply.headers["allow"], reply.content) == (405, "GET, POST", b"")


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_a_path_no_route_takes_still_answers_404(alice: httpx.Client, method: str) -> None:
    assert_error_shape(alice.request(method, "/nowhere/at/all"), 404, "NOT_FOUND")


@pytest.mark.parametrize("query", ["limit=" + HUGE, "limit=-" + HUGE, "limit=abc", "next_token=%ff%fe", "limit=%00"])
@pytest.mark.parametrize("path", ["/jobs", "/templates"])
def test_garbage_query_parameters_answer_400(alice: httpx.Client, path: str, query: str) -> None:
    assert_error_shape(alice.get(f"{path}?{query}"), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("query", ["from=" + HUGE, "to=" + HUGE, "from=2026-13-45"])
def test_garbage_cost_dates_answer_400(alice: httpx.Client, query: str) -> None:
    assert_error_shape(alice.get(f"/costs?{query}"), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize(
    "query",
    [
        f"expires={HUGE}&signature=x",
        f"expires=1&max_bytes={HUGE}&signature=x",
        "expires=abc&signature=%ff",
        "expires=-1",
        "",
        "expires=1&expires=2&signature=" + "a" * 5000,
    ],
)
def test_garbage_blob_url_parameters_answer_400_or_403(served: Served, method: str, query: str) -> None:
    response = httpx.request(
        method, f"{served.base}/blobs/seeds/alice/x.csv?{query}", content=b"x" if method == "PUT" else None, timeout=30
    )
    assert response.status_code in (400, 403), response.text[:300]
    assert_error_shape(
        response, response.status_code, "VALIDATION_ERROR" if response.status_code == 400 else "FORBIDDEN"
    )


def _raw_request(served: Served, request: bytes) -> bytes:
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


@pytest.mark.parametrize(
    ("path", "header", "status"),
    [
        ("/health", b"X-Anything: \xff\xfe\x80", b"200"),
        ("/health", b"X-Correlation-Id: \xc3\x28", b"200"),
        ("/jobs", b"Authorization: Bearer \xff\xfe", b"401"),
        ("/jobs", b"X-Request-Id: \xff", b"401"),
    ],
)
def test_a_non_utf8_header_byte_never_answers_500(served: Served, path: str, header: bytes, status: bytes) -> None:
    reply = _raw_request(
        served, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    )
    assert reply.split(b" ", 2)[1] == status, reply[:300]


def test_openapi_json_is_served_without_a_token(served: Served) -> None:
    document = httpx.get(f"{served.base}/openapi.json", timeout=30).json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for route, item in document["paths"].items():
        for method, operation in item.items():
            assert {"400", "413", "429", "503"} <= set(operation["responses"]), (method, route)
            if "requestBody" in operation:
                assert "415" in operation["responses"], (method, route)
            if route == "/auth/login":  # the one door that takes a password instead of a token
                assert operation["security"] == [], (method, route)
            elif not route.startswith("/health"):
                assert operation["security"] == [{"bearerAuth": []}], (method, route)
                assert "401" in operation["responses"], (method, route)
            no_content = operation["responses"].get("204")
            assert no_content is None or "content" not in no_content, (method, route)


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("text/plain", '{"name": "x"}', 415),
        ("application/json", "[" * DEEP + "]" * DEEP, 400),
        ("application/json", f'{{"num_records": {HUGE}}}', 400),
    ],
)
def test_the_lambda_facade_refuses_the_same_bodies(content_type: str, body: str, status: int) -> None:
    """The checks run in the resolver, so each service's Lambda refuses them too."""
    from palette.api.app import build_app
    from palette.api.asgi import http_api_event, local_context
    from palette.api.auth import LocalTokens

    app = build_app([], LocalTokens(b"malformed-input-test-secret-32-bytes!"), local=False)
    scope = {"method": "POST", "path": "/jobs", "headers": [(b"content-type", content_type.encode())]}
    reply = app.resolve(http_api_event(scope, body.encode(), "req-1"), local_context("req-1"))
    assert reply["statusCode"] == status
    assert json.loads(reply["body"])["meta"]["request_id"] == "req-1"


def test_a_problem_of_the_whole_body_is_named_as_the_request(alice: httpx.Client) -> None:
    # giving both spellings of the output options is a problem of no single field
    reply = alice.post(
        "/jobs",
        json={
            "template_id": "t1",
            "num_records": 1,
            "budget_limit": 1,
            "output_format": "JSONL",
            "export_config": {"formats": ["JSONL"]},
        },
    )
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert message.startswith("invalid request: ") and "not both" in message, message
