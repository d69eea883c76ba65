"""A fake OpenAI-compatible chat completions server: real HTTP, set latency, injected faults.

`FakeOpenAIServer` runs a small ASGI app under uvicorn (asyncio loop, h11) on 127.0.0.1 at a
free port, in a background thread by default or, with `in_process=False`, in a child process
(so a benchmark's CPU figures do not include the server's). Completions are deterministic:
the text names a hash of the prompt; a `json_schema` request gets an object that satisfies
simple schemas (string, integer within its minimum/maximum, number, boolean, enum, array and
nested object properties).
Usage counts words: prompt_tokens = words in the prompt, completion_tokens = words out;
`stats()["usage"]` adds up, per model, the calls answered with usage and their tokens — what a
provider would bill.

Faults are set at runtime and apply to the next calls, in this order: a model named
`always-<status>` always answers that status; `timeout_next` hangs longer than any client
timeout; `fail_next` answers an error status; `throttle_rate`/`error_rate` draw from a seeded
RNG; `malformed_body_next` sends a body that is not JSON; `malformed_json_next` makes a
structured call's content invalid JSON; `reply_next` sets the content of the next
successful answers.

    with FakeOpenAIServer(latency_s=0.05) as server:
        gateway = OpenAICompatibleGateway(base_url=server.base_url, api_key="test")
        server.fail_next(2, status=429, retry_after=1.5)
        ...
        assert server.stats()["calls"] == 3

Run standalone: `python -m tests.fakes.openai_server --port 8100 --latency 0.05`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from typing import Any, Self

import uvicorn

CONTROL_PATH = "/_fake/control"
STATS_PATH = "/_fake/stats"
COMPLETIONS_PATH = "/v1/chat/completions"


def sample_for_schema(schema: dict[str, Any], seed: str) -> Any:
    """A value that satisfies `schema` (simple schemas only), varying deterministically with `seed`."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    number = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    if kind == "object":
        props = schema.get("properties", {})
        return {name: sample_for_schema(sub, f"{seed}.{name}") for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        count = max(1, schema.get("minItems", 1))
        return [sample_for_schema(items, f"{seed}[{i}]") for i in range(count)]
    if kind == "string":
        return f"value-{number % 100000:05d}"
    if kind == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 99)
        return low + number % (high - low + 1)
    if kind == "number":
        return (number % 10000) / 100
    if kind == "boolean":
        return number % 2 == 0
    return None


class FakeBehaviour:
    """The server's injected faults and counters; every method is safe to call from any thread."""

    def __init__(self, *, latency_s: float = 0.0, hang_s: float = 30.0, seed: int = 0) -> None:
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.throttle_rate = 0.0
        self.error_rate = 0.0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._failures: deque[tuple[int, float | None]] = deque()
        self._timeouts = 0
        self._malformed_json = 0
        self._malformed_body = 0
        self._replies: deque[str] = deque()
        self.calls = 0
        self.statuses: Counter[int] = Counter()
        self.models: Counter[str] = Counter()
        self.usage: dict[str, list[int]] = {}
        self.last_requests: deque[dict[str, Any]] = deque(maxlen=50)

    def fail_next(self, n: int = 1, status: int = 500, retry_after: float | None = None) -> None:
        """The next `n` calls answer `status` (with `Retry-After` when given)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * n)

    def timeout_next(self, n: int = 1) -> None:
        """The next `n` calls hang for `hang_s` before answering."""
        with self._lock:
            self._timeouts += n

    def malformed_json_next(self, n: int = 1) -> None:
        """The next `n` structured calls return content that is not valid JSON."""
        with self._lock:
            self._malformed_json += n

    def malformed_body_next(self, n: int = 1) -> None:
        """The next `n` calls answer 200 with a body that is not a completion."""
        with self._lock:
            self._malformed_body += n

    def reply_next(self, content: str, n: int = 1) -> None:
        """The next `n` successful answers have `content` as their text."""
        with self._lock:
            self._replies.extend([content] * n)

    def next_reply(self) -> str | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    def set_rates(
        self, throttle_rate: float | None = None, error_rate: float | None = None, seed: int | None = None
    ) -> None:
        """Random 429s and 500s at these rates, drawn from an RNG seeded with `seed`."""
        with self._lock:
            if throttle_rate is not None:
                self.throttle_rate = throttle_rate
            if error_rate is not None:
                self.error_rate = error_rate
            if seed is not None:
                self._rng.seed(seed)

    def set_latency(self, latency_s: float) -> None:
        self.latency_s = latency_s

    def reset(self) -> None:
        """Clear pending faults and counters."""
        with self._lock:
            self._failures.clear()
            self._timeouts = self._malformed_json = self._malformed_body = 0
            self._replies.clear()
            self.throttle_rate = self.error_rate = 0.0
            self.calls = 0
            self.statuses.clear()
            self.models.clear()
            self.usage.clear()
            self.last_requests.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "models": dict(self.models),
                "usage": {
                    model: {"calls": c, "input_tokens": i, "output_tokens": o}
                    for model, (c, i, o) in self.usage.items()
                },
                "last_requests": list(self.last_requests),
            }

    def decide(self, request: dict[str, Any]) -> tuple[str, int, float | None]:
        """What to do with this call: ('ok'|'hang'|'fail'|'malformed_json'|'malformed_body', status, retry_after)."""
        model = str(request.get("model", ""))
        with self._lock:
            self.calls += 1
            self.models[model] += 1
            self.last_requests.append(request)
            if model.startswith("always-") and model[7:].isdigit():
                return "fail", int(model[7:]), None
            if self._timeouts:
                self._timeouts -= 1
                return "hang", 200, None
            if self._failures:
                status, retry_after = self._failures.popleft()
                return "fail", status, retry_after
            if self.throttle_rate and self._rng.random() < self.throttle_rate:
                return "fail", 429, None
            if self.error_rate and self._rng.random() < self.error_rate:
                return "fail", 500, None
            if self._malformed_body:
                self._malformed_body -= 1
                return "malformed_body", 200, None
            if self._malformed_json and request.get("response_format"):
                self._malformed_json -= 1
                return "malformed_json", 200, None
            return "ok", 200, None

    def count(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1

    def bill(self, completion: dict[str, Any]) -> dict[str, Any]:
        """Count an answer's usage (what a provider bills) and return the answer."""
        usage = completion["usage"]
        with self._lock:
            tally = self.usage.setdefault(str(completion["model"]), [0, 0, 0])
            tally[0] += 1
            tally[1] += usage["prompt_tokens"]
            tally[2] += usage["completion_tokens"]
        return completion


_ERROR_TEXT = {
    400: ("invalid_request_error", "bad request"),
    401: ("invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", "You are not allowed to use this model."),
    404: ("model_not_found", "The model does not exist or you do not have access to it."),
    429: ("rate_limit_exceeded", "Rate limit reached. Please try again later."),
}


def _completion(request: dict[str, Any], content: str) -> dict[str, Any]:
    prompt = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": max(1, len(prompt.split())),
            "completion_tokens": max(1, len(content.split())),
            "total_tokens": max(1, len(prompt.split())) + max(1, len(content.split())),
        },
    }


def _content_for(request: dict[str, Any]) -> str:
    prompt = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", {})
        return json.dumps(sample_for_schema(schema, digest))
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": f"value-{digest[:8]}"})
    return f"Synthetic answer {digest[:12]} for the prompt."


class FakeOpenAIApp:
    """The ASGI app: chat completions, plus control and stats routes for a child-process server."""

    def __init__(self, behaviour: FakeBehaviour, api_key: str | None = None) -> None:
        self.behaviour = behaviour
        self.api_key = api_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if path == COMPLETIONS_PATH and scope["method"] == "POST":
            await self._completions(scope, body, send)
        elif path == CONTROL_PATH and scope["method"] == "POST":
            command = json.loads(body)
            getattr(self.behaviour, command["method"])(**command.get("kwargs", {}))
            await _send_json(send, 200, {"ok": True})
        elif path == STATS_PATH:
            await _send_json(send, 200, self.behaviour.stats())
        else:
            await _send_json(send, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    async def _completions(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        behaviour = self.behaviour
        if self.api_key is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if auth != f"Bearer {self.api_key}".encode():
                behaviour.count(401)
                await _send_error(send, 401, None)
                return
        try:
            request = json.loads(body)
        except ValueError:
            behaviour.count(400)
            await _send_error(send, 400, None)
            return
        action, status, retry_after = behaviour.decide(request)
        if behaviour.latency_s:
            await asyncio.sleep(behaviour.latency_s)
        if action == "hang":
            await asyncio.sleep(behaviour.hang_s)
        behaviour.count(status)
        if action == "fail":
            await _send_error(send, status, retry_after)
        elif action == "malformed_body":
            await _send_raw(send, 200, b'{"choices": [', b"application/json")
        elif action == "malformed_json":
            await _send_json(send, 200, behaviour.bill(_completion(request, '{"unterminated": ')))
        else:
            reply = behaviour.next_reply()
            content = _content_for(request) if reply is None else reply
            await _send_json(send, 200, behaviour.bill(_completion(request, content)))


async def _send_raw(
    send: Any, status: int, payload: bytes, content_type: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _send_json(send: Any, status: int, document: Any, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await _send_raw(send, status, json.dumps(document).encode(), b"application/json", extra)


async def _send_error(send: Any, status: int, retry_after: float | None) -> None:
    code, message = _ERROR_TEXT.get(status, ("server_error", "The server had an error processing your request."))
    extra = ((b"retry-after", f"{retry_after:g}".encode()),) if retry_after is not None else ()
    await _send_json(send, status, {"error": {"message": message, "type": code, "code": code}}, extra)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _uvicorn_config(app: FakeOpenAIApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
    )


class FakeOpenAIServer:
    """Context manager serving the fake at `base_url` (…/v1), in a thread or a child process."""

    def __init__(
        self,
        latency_s: float = 0.0,
        *,
        hang_s: float = 30.0,
        throttle_rate: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 0,
        api_key: str | None = None,
        in_process: bool = True,
    ) -> None:
        self.behaviour = FakeBehaviour(latency_s=latency_s, hang_s=hang_s, seed=seed)
        self.behaviour.set_rates(throttle_rate, error_rate)
        self._api_key = api_key
        self._in_process = in_process
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        sock = _free_socket()
        self.port = sock.getsockname()[1]
        if self._in_process:
            self._server = uvicorn.Server(_uvicorn_config(FakeOpenAIApp(self.behaviour, self._api_key)))
            self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
            self._thread.start()
            while not self._server.started:
                if not self._thread.is_alive():
                    raise RuntimeError("fake OpenAI server failed to start")
                time.sleep(0.01)
            return
        sock.close()
        b = self.behaviour
        args = [
            sys.executable,
            "-m",
            "tests.fakes.openai_server",
            "--port",
            str(self.port),
            "--latency",
            str(b.latency_s),
            "--hang",
            str(b.hang_s),
            "--throttle-rate",
            str(b.throttle_rate),
            "--error-rate",
            str(b.error_rate),
        ]
        if self._api_key is not None:
            args += ["--api-key", self._api_key]
        self._process = subprocess.Popen(args)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("fake OpenAI server process failed to start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _control(self, method: str, **kwargs: Any) -> None:
        if self._process is None:
            getattr(self.behaviour, method)(**kwargs)
            return
        import httpx

        httpx.post(
            f"http://127.0.0.1:{self.port}{CONTROL_PATH}", json={"method": method, "kwargs": kwargs}
        ).raise_for_status()

    def fail_next(self, n: int = 1, status: int = 500, retry_after: float | None = None) -> None:
        self._control("fail_next", n=n, status=status, retry_after=retry_after)

    def timeout_next(self, n: int = 1) -> None:
        self._control("timeout_next", n=n)

    def malformed_json_next(self, n: int = 1) -> None:
        self._control("malformed_json_next", n=n)

    def malformed_body_next(self, n: int = 1) -> None:
        self._control("malformed_body_next", n=n)

    def reply_next(self, content: str, n: int = 1) -> None:
        self._control("reply_next", content=content, n=n)

    def set_rates(
        self, throttle_rate: float | None = None, error_rate: float | None = None, seed: int | None = None
    ) -> None:
        self._control("set_rates", throttle_rate=throttle_rate, error_rate=error_rate, seed=seed)

    def set_latency(self, latency_s: float) -> None:
        self._control("set_latency", latency_s=latency_s)

    def reset(self) -> None:
        self._control("reset")

    def stats(self) -> dict[str, Any]:
        """Calls received, answers by status, calls by model, the last 50 request bodies."""
        if self._process is None:
            return self.behaviour.stats()
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}{STATS_PATH}").json()

    @property
    def calls(self) -> int:
        return int(self.stats()["calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--hang", type=float, default=30.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    behaviour = FakeBehaviour(latency_s=args.latency, hang_s=args.hang)
    behaviour.set_rates(args.throttle_rate, args.error_rate)
    config = _uvicorn_config(FakeOpenAIApp(behaviour, args.api_key))
    config.host, config.port = "127.0.0.1", args.port
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
