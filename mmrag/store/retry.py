"""Retries for store calls: transient failures (network, 5xx, 429) are retried with
exponential backoff and jitter; everything else fails at once.

Retrying writes is safe because point ids are deterministic (uuid5 of the path): an
upsert that landed before its response was lost is simply overwritten by the retry.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import tenacity
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

try:  # qdrant-client raises this (not UnexpectedResponse) for a 429 that carries Retry-After
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
except ImportError:  # pragma: no cover - older qdrant-client
    ResourceExhaustedResponse = None  # type: ignore[assignment,misc]

from mmrag.errors import RunFailed
from mmrag.store.base import Store
from mmrag.store.schema import SchemaMismatch

try:  # grpc ships with qdrant-client, but keep the module importable without it
    import grpc

    _GRPC_TRANSIENT = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
except ImportError:  # pragma: no cover - depends on the environment
    grpc = None
    _GRPC_TRANSIENT = set()

log = logging.getLogger(__name__)

# OSError numbers that mean "the network or the peer had a moment", not "you asked wrongly".
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
    errno.EAGAIN,
}

# httpx transport errors that are caused by the request itself, so a retry cannot help.
_HTTPX_PERMANENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure: connection/timeout errors, HTTP 5xx and 429,
    gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED. False for 4xx, SchemaMismatch,
    ValueError/TypeError and anything unknown."""
    if isinstance(exc, (SchemaMismatch, ValueError, TypeError)):
        return False
    if ResourceExhaustedResponse is not None and isinstance(exc, ResourceExhaustedResponse):
        return True  # 429 with Retry-After: the server asks us to come back later
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code
        return status is not None and (status == 429 or 500 <= status <= 599)
    if isinstance(exc, ResponseHandlingException):
        # qdrant-client wraps transport errors (httpx.ConnectError, ...) in this.
        source = getattr(exc, "source", None)
        return isinstance(source, BaseException) and is_transient(source)
    if isinstance(exc, httpx.TransportError):  # includes httpx.TimeoutException
        return not isinstance(exc, _HTTPX_PERMANENT)
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() in _GRPC_TRANSIENT
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    return False


def _retry_after_seconds(exc: BaseException | None) -> float:
    """The server's Retry-After (seconds or HTTP date) on a 429/503, else 0."""
    if ResourceExhaustedResponse is not None and isinstance(exc, ResourceExhaustedResponse):
        return max(0.0, float(exc.retry_after_s))
    if not isinstance(exc, UnexpectedResponse) or exc.headers is None:
        return 0.0
    value = exc.headers.get("retry-after")
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` tries, waiting about initial_seconds * 2**n (plus jitter) between them,
    and giving up early rather than run past `max_seconds` in total."""

    attempts: int = 6
    initial_seconds: float = 0.5
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.initial_seconds <= 0 or self.max_seconds <= 0:
            raise ValueError(
                f"retry times must be > 0, got initial_seconds={self.initial_seconds}, max_seconds={self.max_seconds}"
            )

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(
            attempts=settings.retry_attempts,
            initial_seconds=settings.retry_initial_seconds,
            max_seconds=settings.retry_max_seconds,
        )

    def stop(self) -> tenacity.stop.stop_base:
        # stop_before_delay (tenacity >= 8.3) also refuses a wait that would overrun the budget.
        by_time = getattr(tenacity, "stop_before_delay", tenacity.stop_after_delay)
        return tenacity.stop_after_attempt(self.attempts) | by_time(self.max_seconds)

    def wait(self) -> Callable[[tenacity.RetryCallState], float]:
        backoff = tenacity.wait_exponential_jitter(
            initial=self.initial_seconds, max=self.max_seconds, jitter=self.initial_seconds
        )

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            # Honour a server's Retry-After, but never beyond our own budget.
            return min(self.max_seconds, max(backoff(state), _retry_after_seconds(exc)))

        return wait


# Store methods that change data: only after these is "re-run, ids are deterministic" advice.
WRITE_OPERATIONS = frozenset({
    "create_collection", "update_metadata", "delete_collection", "create_payload_index", "set_alias",
    "delete_alias", "upsert", "delete_points", "set_payload", "set_payloads", "optimize",
})


class StoreUnavailable(RunFailed):
    """The store kept failing transiently until the retry budget ran out."""

    def __init__(self, operation: str, attempts: int, elapsed: float, last_error: BaseException) -> None:
        self.operation = operation
        self.attempts = attempts
        self.elapsed = elapsed
        self.last_error = last_error
        advice = (
            "Check that Qdrant is reachable, then re-run: it is safe, because point ids are "
            "deterministic and points already written are overwritten, not duplicated."
            if operation in WRITE_OPERATIONS
            # a read wrote nothing: the idempotence advice would only confuse
            else "Check that Qdrant is reachable (QDRANT_URL), then try again."
        )
        super().__init__(
            f"store operation {operation!r} failed after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"over {elapsed:.1f}s; last error: {type(last_error).__name__}: {last_error}. {advice}"
        )


# Probes run before a retry: if the first attempt actually succeeded server-side (its
# response was lost), a retry would fail with a non-transient "already exists".
def _created_already(inner: Any, args: tuple, kwargs: dict) -> bool:
    spec = args[0] if args else kwargs.get("spec")
    name = getattr(spec, "name", None)
    return bool(name) and bool(inner.collection_exists(name))


_ALREADY_DONE: dict[str, Callable[[Any, tuple, dict], bool]] = {"create_collection": _created_already}


class RetryingStore:
    """A Store proxy that retries every method of the wrapped store on transient errors.

    Non-transient errors propagate unchanged on the first failure. When the policy runs out,
    StoreUnavailable is raised (chained to the last error). `stats` maps operation -> number of
    retries made, for reports. `sleep` (and `asleep` for async methods) are injectable so
    tests do not wait; a sync `sleep` other than time.sleep is used for async methods too.
    """

    def __init__(
        self,
        store: Store,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._inner = store
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        if asleep is None:
            if sleep is time.sleep:
                asleep = asyncio.sleep
            else:

                async def asleep(seconds: float) -> None:
                    sleep(seconds)

        self._asleep = asleep
        self.stats: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def inner(self) -> Store:
        return self._inner

    @property
    def backend_name(self) -> str:
        return self._inner.backend_name

    def __repr__(self) -> str:
        return f"RetryingStore({self._inner!r}, {self.policy!r})"

    # --- plumbing -------------------------------------------------------------------

    def _count_retry(self, operation: str, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self.stats[operation] = self.stats.get(operation, 0) + 1
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "store %s failed (attempt %d/%d): %s: %s; retrying in %.2fs",
            operation, state.attempt_number, self.policy.attempts, type(exc).__name__, exc, wait,
        )

    def _retry_kwargs(self, operation: str) -> dict[str, Any]:
        return dict(
            stop=self.policy.stop(),
            wait=self.policy.wait(),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=functools.partial(self._count_retry, operation),
            reraise=False,
        )

    def _unavailable(self, operation: str, error: tenacity.RetryError, started: float) -> StoreUnavailable:
        state = error.last_attempt
        last = state.exception()
        return StoreUnavailable(operation, state.attempt_number, time.monotonic() - started, last)  # type: ignore[arg-type]  # a failed attempt has one

    def _call(self, operation: str, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        probe = _ALREADY_DONE.get(operation)
        started = time.monotonic()
        try:
            for attempt in tenacity.Retrying(sleep=self._sleep, **self._retry_kwargs(operation)):
                with attempt:
                    if probe is not None and attempt.retry_state.attempt_number > 1 and probe(self._inner, args, kwargs):
                        return None
                    return method(*args, **kwargs)
        except tenacity.RetryError as error:
            raise self._unavailable(operation, error, started) from error.last_attempt.exception()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acall(self, operation: str, method: Callable[..., Awaitable[Any]], args: tuple, kwargs: dict) -> Any:
        started = time.monotonic()
        try:
            async for attempt in tenacity.AsyncRetrying(sleep=self._asleep, **self._retry_kwargs(operation)):
                with attempt:
                    return await method(*args, **kwargs)
        except tenacity.RetryError as error:
            raise self._unavailable(operation, error, started) from error.last_attempt.exception()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        # Not retried: a failing close is not worth waiting for.
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the proxy does not define (backend extras): retried too.
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):

            @functools.wraps(attr)
            async def async_method(*args: Any, **kwargs: Any) -> Any:
                return await self._acall(name, attr, args, kwargs)

            return async_method

        @functools.wraps(attr)
        def method(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, attr, args, kwargs)

        return method


def _protocol_method(name: str, is_async: bool) -> Callable[..., Any]:
    """A real class attribute per protocol method, so the proxy satisfies isinstance(…, Store)
    also on Pythons whose runtime_checkable uses getattr_static (which ignores __getattr__)."""
    if is_async:

        async def async_method(self: RetryingStore, *args: Any, **kwargs: Any) -> Any:
            return await self._acall(name, getattr(self._inner, name), args, kwargs)

        wrapper: Callable[..., Any] = async_method
    else:

        def method(self: RetryingStore, *args: Any, **kwargs: Any) -> Any:
            return self._call(name, getattr(self._inner, name), args, kwargs)

        wrapper = method
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = getattr(Store, name).__doc__
    return wrapper


for _name, _member in list(vars(Store).items()):
    if callable(_member) and not _name.startswith("_") and _name not in vars(RetryingStore):
        setattr(RetryingStore, _name, _protocol_method(_name, inspect.iscoroutinefunction(_member)))
del _name, _member
