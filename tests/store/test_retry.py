"""Transient-error classification and the retrying store proxy (mmrag.store.retry)."""

from __future__ import annotations

import errno
import inspect
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import grpc
import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from mmrag.settings import Settings
from mmrag.store.base import Store
from mmrag.store.client import QdrantClientStore
from mmrag.store.convert import build_payload, build_point, point_id
from mmrag.store.retry import RetryingStore, RetryPolicy, StoreUnavailable, is_transient
from mmrag.store.schema import CollectionSpec, SchemaMismatch

COLLECTION = "imgs"
DIM = 4


def http_error(status: int, headers: dict[str, str] | None = None) -> UnexpectedResponse:
    return UnexpectedResponse(status, "reason", b'{"status":{"error":"boom"}}', httpx.Headers(headers or {}))


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


# --- classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, expected",
    [
        (http_error(503), True),
        (http_error(500), True),
        (http_error(502), True),
        (http_error(429), True),
        (http_error(400), False),
        (http_error(404), False),
        (http_error(409), False),
        (UnexpectedResponse(None, "", b"", httpx.Headers()), False),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("Server disconnected"), True),
        (httpx.UnsupportedProtocol("ftp://"), False),
        (ResponseHandlingException(httpx.ConnectError("refused")), True),
        (ResponseHandlingException(ValueError("bad json")), False),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (TimeoutError(), True),
        (OSError(errno.ENETUNREACH, "unreachable"), True),
        (OSError(errno.ENOENT, "no such file"), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE), True),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED), True),
        (FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT), False),
        (FakeRpcError(grpc.StatusCode.NOT_FOUND), False),
        (SchemaMismatch("other model"), False),
        (ValueError("bad"), False),
        (TypeError("bad"), False),
        (RuntimeError("?"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


def test_policy_from_settings_and_validation() -> None:
    settings = Settings(retry_attempts=3, retry_initial_seconds=0.1, retry_max_seconds=5.0)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(attempts=3, initial_seconds=0.1, max_seconds=5.0)
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy()
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="must be > 0"):
        RetryPolicy(initial_seconds=0)


# --- a flaky wrapper around a real store ---------------------------------------------


class FlakyStore:
    """Forwards to `inner`, but the first len(errors) calls of `op` raise errors[i] instead.

    With `fail_after=True` the call is made first and the error raised afterwards (a lost response).
    """

    def __init__(self, inner: Any, op: str, errors: list[BaseException] | Callable[[int], BaseException | None], *,
                 fail_after: bool = False) -> None:
        self.inner = inner
        self.op = op
        self.errors = errors
        self.fail_after = fail_after
        self.calls: Counter[str] = Counter()

    def _error(self, name: str) -> BaseException | None:
        self.calls[name] += 1
        if name != self.op:
            return None
        n = self.calls[name]
        if callable(self.errors):
            return self.errors(n)
        return self.errors[n - 1] if n <= len(self.errors) else None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):

            async def async_method(*args: Any, **kwargs: Any) -> Any:
                error = self._error(name)
                if error is not None and not self.fail_after:
                    raise error
                result = await attr(*args, **kwargs)
                if error is not None:
                    raise error
                return result

            return async_method

        def method(*args: Any, **kwargs: Any) -> Any:
            error = self._error(name)
            if error is not None and not self.fail_after:
                raise error
            result = attr(*args, **kwargs)
            if error is not None:
                raise error
            return result

        return method


SPEC = CollectionSpec(name=COLLECTION, dim=DIM, model_id="tiny")


def make_points(n: int) -> list:
    points = []
    for i in range(n):
        rel = f"batch/img_{i:02d}.png"
        payload = build_payload(
            rel_path=rel, caption=None, sha256=f"{i:064x}", width=8, height=8, format="PNG", file_size=100,
            mtime=float(i), model_id="tiny", ingested_at=datetime(2024, 1, 1, tzinfo=timezone.utc), metadata=None,
        )
        vector = [1.0, float(i), 0.5, -1.0]
        points.append(build_point(rel, vector, vector[::-1], payload))
    return points


@pytest.fixture
def memory_store() -> Iterator[QdrantClientStore]:
    inner = QdrantClientStore(QdrantClient(":memory:"))
    inner.create_collection(SPEC)
    yield inner
    inner.close()


def retrying(flaky: FlakyStore, sleeps: list[float], attempts: int = 4, max_seconds: float = 60.0) -> RetryingStore:
    return RetryingStore(flaky, RetryPolicy(attempts=attempts, initial_seconds=0.5, max_seconds=max_seconds),
                         sleep=sleeps.append)


@pytest.mark.parametrize(
    "error",
    [
        http_error(503),
        http_error(429),
        httpx.ConnectError("connection refused"),
        ResponseHandlingException(httpx.ConnectError("connection refused")),
    ],
    ids=["503", "429", "connect-error", "wrapped-connect-error"],
)
def test_transient_failures_are_retried_and_data_lands(memory_store: QdrantClientStore, error: BaseException) -> None:
    flaky = FlakyStore(memory_store, "upsert", [error, error])
    sleeps: list[float] = []
    store = retrying(flaky, sleeps)
    points = make_points(12)
    store.upsert(COLLECTION, points)

    assert flaky.calls["upsert"] == 3
    assert store.stats == {"upsert": 2}
    # Exponential backoff with jitter: 0.5 * 2**n + U(0, 0.5).
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 1.5
    assert store.count(COLLECTION) == 12
    records, next_offset = store.scroll(COLLECTION, limit=100)
    assert next_offset is None
    assert {r.id for r in records} == {point_id(f"batch/img_{i:02d}.png") for i in range(12)}
    assert flaky.calls["count"] == 1 and store.stats == {"upsert": 2}


def test_lost_upsert_response_is_safe_to_repeat(memory_store: QdrantClientStore) -> None:
    # The write lands, its response is lost (503), the retry writes the same ids again.
    flaky = FlakyStore(memory_store, "upsert", [http_error(503)], fail_after=True)
    store = retrying(flaky, [])
    store.upsert(COLLECTION, make_points(5))
    store.upsert(COLLECTION, make_points(5))
    assert flaky.calls["upsert"] == 3
    assert store.count(COLLECTION) == 5


def test_retry_after_header_is_honoured(memory_store: QdrantClientStore) -> None:
    flaky = FlakyStore(memory_store, "count", [http_error(429, {"Retry-After": "7"})])
    sleeps: list[float] = []
    assert retrying(flaky, sleeps).count(COLLECTION) == 0
    assert sleeps == [7.0]


@pytest.mark.parametrize(
    "error, kind",
    [(http_error(400), UnexpectedResponse), (SchemaMismatch("model differs"), SchemaMismatch), (ValueError("no"), ValueError)],
    ids=["400", "schema-mismatch", "value-error"],
)
def test_permanent_failures_are_not_retried(memory_store: QdrantClientStore, error: BaseException, kind: type) -> None:
    flaky = FlakyStore(memory_store, "upsert", [error, error])
    sleeps: list[float] = []
    store = retrying(flaky, sleeps)
    with pytest.raises(kind) as info:
        store.upsert(COLLECTION, make_points(3))
    assert info.value is error
    assert flaky.calls["upsert"] == 1
    assert sleeps == [] and store.stats == {}
    assert store.count(COLLECTION) == 0


def test_exhausted_retries_raise_store_unavailable(memory_store: QdrantClientStore) -> None:
    flaky = FlakyStore(memory_store, "upsert", lambda n: http_error(503))
    sleeps: list[float] = []
    store = retrying(flaky, sleeps, attempts=4)
    with pytest.raises(StoreUnavailable) as info:
        store.upsert(COLLECTION, make_points(2))
    exc = info.value
    assert flaky.calls["upsert"] == 4
    assert len(sleeps) == 3 and store.stats == {"upsert": 3}
    assert exc.operation == "upsert" and exc.attempts == 4
    assert isinstance(exc.last_error, UnexpectedResponse) and exc.__cause__ is exc.last_error
    message = str(exc)
    assert message.startswith("store operation 'upsert' failed after 4 attempts over ")
    assert "last error: UnexpectedResponse: Unexpected Response: 503 (reason)" in message
    assert "re-run: it is safe, because point ids are deterministic" in message


def test_a_failed_read_gives_no_rerun_advice(memory_store: QdrantClientStore) -> None:
    flaky = FlakyStore(memory_store, "count", lambda n: http_error(503))
    store = retrying(flaky, [], attempts=2)
    with pytest.raises(StoreUnavailable) as info:
        store.count(COLLECTION)
    message = str(info.value)
    assert "deterministic" not in message and "re-run" not in message
    assert message.endswith("Check that Qdrant is reachable (QDRANT_URL), then try again.")


def test_time_budget_stops_before_attempts_run_out(memory_store: QdrantClientStore) -> None:
    # Every wait would reach the 0.05 s budget, so the first failure is also the last.
    flaky = FlakyStore(memory_store, "count", lambda n: http_error(503))
    sleeps: list[float] = []
    store = retrying(flaky, sleeps, attempts=6, max_seconds=0.05)
    with pytest.raises(StoreUnavailable, match="failed after 1 attempt over"):
        store.count(COLLECTION)
    assert flaky.calls["count"] == 1 and sleeps == []


def test_create_collection_whose_response_was_lost(memory_store: QdrantClientStore) -> None:
    spec = CollectionSpec(name="fresh", dim=DIM, model_id="tiny")
    flaky = FlakyStore(memory_store, "create_collection", [http_error(503)], fail_after=True)
    store = retrying(flaky, [])
    store.create_collection(spec)  # the retry sees the collection and does not fail with "already exists"
    assert flaky.calls["create_collection"] == 1
    assert store.get_spec("fresh") == spec
    with pytest.raises(ValueError, match="already exists"):
        store.create_collection(spec)


async def test_async_methods_are_retried(memory_store: QdrantClientStore) -> None:
    memory_store.upsert(COLLECTION, make_points(3))
    flaky = FlakyStore(memory_store, "asearch", [httpx.ReadTimeout("slow"), http_error(502)])
    sleeps: list[float] = []
    store = retrying(flaky, sleeps)
    hits = await store.asearch(COLLECTION, [1.0, 0.0, 0.5, -1.0], using="image", limit=3)
    assert [h.id for h in hits] == [h.id for h in memory_store.search(COLLECTION, [1.0, 0.0, 0.5, -1.0], using="image", limit=3)]
    assert len(hits) == 3
    assert flaky.calls["asearch"] == 3 and store.stats == {"asearch": 2} and len(sleeps) == 2

    always = FlakyStore(memory_store, "asearch_fused", lambda n: http_error(503))
    store = retrying(always, [], attempts=3)
    with pytest.raises(StoreUnavailable, match="'asearch_fused' failed after 3 attempts"):
        await store.asearch_fused(COLLECTION, {"image": [1.0, 0.0, 0.0, 0.0]})
    assert always.calls["asearch_fused"] == 3


def test_proxy_is_a_vector_store(memory_store: QdrantClientStore) -> None:
    store = RetryingStore(memory_store, RetryPolicy())
    assert isinstance(store, Store)
    assert store.inner is memory_store
    assert store.backend_name == "qdrant"
    assert store.list_collections() == [COLLECTION]
    assert store.client is memory_store.client  # backend extras are forwarded
    assert store.stats == {}


# --- real transports ---------------------------------------------------------------


class _AcceptAndClose:
    """A TCP listener that accepts connections and closes them at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(port: int) -> QdrantClient:
    return QdrantClient(url=f"http://127.0.0.1:{port}", timeout=5, check_compatibility=False)


@pytest.fixture
def hangup_server() -> Iterator[_AcceptAndClose]:
    server = _AcceptAndClose()
    yield server
    server.close()


def test_real_disconnect_is_transient_and_retried(hangup_server: _AcceptAndClose) -> None:
    client = _client(hangup_server.port)
    try:
        with pytest.raises(Exception) as raw:
            client.get_collections()
        assert is_transient(raw.value), repr(raw.value)
        assert hangup_server.accepted == 1

        sleeps: list[float] = []
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=3), sleep=sleeps.append)
        with pytest.raises(StoreUnavailable, match="'list_collections' failed after 3 attempts") as info:
            store.list_collections()
        assert hangup_server.accepted == 1 + 3
        assert len(sleeps) == 2 and store.stats == {"list_collections": 2}
        assert is_transient(info.value.last_error)
    finally:
        client.close()


def test_real_refused_connection_is_transient_and_retried() -> None:
    client = _client(_closed_port())
    try:
        with pytest.raises(Exception) as raw:
            client.get_collections()
        assert isinstance(raw.value, ResponseHandlingException)
        assert isinstance(raw.value.source, httpx.ConnectError)
        assert is_transient(raw.value)

        sleeps: list[float] = []
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=4), sleep=sleeps.append)
        with pytest.raises(StoreUnavailable, match="'count' failed after 4 attempts") as info:
            store.count(COLLECTION)
        assert info.value.attempts == 4 and len(sleeps) == 3
    finally:
        client.close()


class _FlakyQdrantHandler(BaseHTTPRequestHandler):
    """Answers `status` to the first `failures` requests, then a valid `GET /collections`."""

    server: _FlakyQdrant

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        with srv.lock:
            srv.requests.append(self.path)
            failing = len(srv.requests) <= srv.failures
        if failing:
            body = json.dumps({"status": {"error": "service unavailable"}, "time": 0}).encode()
            self.send_response(srv.status)
            if srv.retry_after is not None:
                self.send_header("Retry-After", srv.retry_after)
        elif self.path == "/collections":
            body = json.dumps({"result": {"collections": []}, "status": "ok", "time": 0}).encode()
            self.send_response(200)
        else:
            body = b"{}"
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _FlakyQdrant(HTTPServer):
    def __init__(self, failures: int, status: int, retry_after: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _FlakyQdrantHandler)
        self.failures = failures
        self.status = status
        self.retry_after = retry_after
        self.requests: list[str] = []
        self.lock = threading.Lock()


@pytest.fixture
def flaky_server(request: pytest.FixtureRequest) -> Iterator[_FlakyQdrant]:
    failures, status, *retry_after = request.param
    server = _FlakyQdrant(failures, status, *retry_after)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("flaky_server", [(3, 503)], indirect=True)
def test_real_client_recovers_after_503s(flaky_server: _FlakyQdrant) -> None:
    client = _client(flaky_server.server_address[1])
    try:
        sleeps: list[float] = []
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=5), sleep=sleeps.append)
        assert store.list_collections() == []
        assert flaky_server.requests == ["/collections"] * 4
        assert store.stats == {"list_collections": 3} and len(sleeps) == 3
    finally:
        client.close()


@pytest.mark.parametrize("flaky_server", [(10, 503)], indirect=True)
def test_real_client_gives_up_after_attempts(flaky_server: _FlakyQdrant) -> None:
    client = _client(flaky_server.server_address[1])
    try:
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=3), sleep=lambda s: None)
        with pytest.raises(StoreUnavailable, match="'list_collections' failed after 3 attempts") as info:
            store.list_collections()
        assert len(flaky_server.requests) == 3
        assert isinstance(info.value.last_error, UnexpectedResponse) and info.value.last_error.status_code == 503
    finally:
        client.close()


@pytest.mark.parametrize("flaky_server", [(10, 400)], indirect=True)
def test_real_client_400_is_not_retried(flaky_server: _FlakyQdrant) -> None:
    client = _client(flaky_server.server_address[1])
    try:
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=5), sleep=lambda s: None)
        with pytest.raises(UnexpectedResponse) as info:
            store.list_collections()
        assert info.value.status_code == 400
        assert len(flaky_server.requests) == 1 and store.stats == {}
    finally:
        client.close()


@pytest.mark.parametrize("flaky_server", [(2, 429, "3")], indirect=True)
def test_real_429_with_retry_after_is_retried_after_the_servers_wait(flaky_server: _FlakyQdrant) -> None:
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse

    client = _client(flaky_server.server_address[1])
    try:
        with pytest.raises(ResourceExhaustedResponse) as raw:  # what qdrant-client raises for it
            client.get_collections()
        assert is_transient(raw.value) and raw.value.retry_after_s == 3
        sleeps: list[float] = []
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=5, initial_seconds=0.01),
                              sleep=sleeps.append)
        assert store.list_collections() == []
        assert flaky_server.requests == ["/collections"] * 3  # the raw 429, one more, then the answer
        assert sleeps == [3.0]  # the server's Retry-After, not our 0.01 s backoff
    finally:
        client.close()


@pytest.mark.parametrize("flaky_server", [(10, 429, "30")], indirect=True)
def test_real_429_retry_after_beyond_the_budget_gives_up(flaky_server: _FlakyQdrant) -> None:
    client = _client(flaky_server.server_address[1])
    try:
        sleeps: list[float] = []
        store = RetryingStore(QdrantClientStore(client), RetryPolicy(attempts=5, max_seconds=5), sleep=sleeps.append)
        with pytest.raises(StoreUnavailable, match="'list_collections' failed after"):
            store.list_collections()
        assert all(s <= 5 for s in sleeps)  # never waits past the bounded total time
    finally:
        client.close()
