"""The Anthropic Message Batches adapter, over the official SDK.

Every call runs under a trio deadline; the SDK's own retries are off (its
backoff would honour a `retry-after` of hours), so what to do next is
decided here, once, and given to the caller as one of three errors:

- `ProviderUnavailable` (retry later): rate limits, overload, 5xx, time-outs,
  broken connections, answers that are not valid JSON; carries the
  provider's `retry-after`, capped;
- `ProviderRejected` (give up on this job): the provider refused the request
  (400, 413, 422) and says why;
- `BatchNotFound`: the provider does not know the batch.

Results are streamed as raw bytes, cut into lines once per read from the
connection, and parsed here with orjson: the SDK's per-line models cost ten
times more than `json.loads`, and `json.loads` twice what orjson does;
parsing is most of the reading side of an ingest.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anthropic
import httpx2
import orjson
import trio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from batchwarden.errors import Rejected, RetryLater
from batchwarden.states import ItemStatus
from batchwarden.store.records import ResultRow, Usage
from batchwarden.telemetry.metrics import Metrics
from batchwarden.telemetry.tracing import tracer

T = TypeVar("T")

MAX_RETRY_AFTER_S = 300.0


class ProviderUnavailable(RetryLater):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderRejected(Rejected):
    pass


class BatchNotFound(Rejected):
    pass


@dataclass(frozen=True, slots=True)
class BatchState:
    id: str
    processing_status: str
    request_counts: dict[str, int]
    created_at: datetime
    ended_at: datetime | None
    expires_at: datetime | None
    archived_at: datetime | None


class AnthropicProvider:
    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._client = anthropic.AsyncAnthropic(
            base_url=base_url,
            api_key=api_key or "missing-key",
            max_retries=0,
            timeout=timeout_s,
            # Our own span of each call carries the provider batch id; the
            # SDK's would repeat it, at a cost on every poll.
            open_telemetry=False,
        )

    async def create(self, requests: list[dict[str, Any]]) -> BatchState:
        batches = self._client.messages.batches
        with self._observed("create", None):
            return _state(await self._call(lambda: batches.create(requests=requests)))

    async def retrieve(self, batch_id: str) -> BatchState:
        batches = self._client.messages.batches
        with self._observed("retrieve", batch_id):
            return _state(await self._call(lambda: batches.retrieve(batch_id)))

    async def cancel(self, batch_id: str) -> BatchState:
        batches = self._client.messages.batches
        with self._observed("cancel", batch_id):
            return _state(await self._call(lambda: batches.cancel(batch_id)))

    async def results(self, batch_id: str) -> AsyncIterator[list[ResultRow]]:
        """The batch's results, in the pieces they arrive in (the complete
        lines of each read from the connection). A broken stream raises
        ProviderUnavailable; each line is checked."""
        streaming = self._client.messages.batches.with_streaming_response
        # Not the current span: a generator's context is its consumer's.
        with self._observed("results", batch_id, current=False):
            async for rows in self._stream(streaming, batch_id):
                yield rows

    async def _stream(
        self, streaming: Any, batch_id: str
    ) -> AsyncIterator[list[ResultRow]]:
        try:
            with trio.fail_after(self.timeout_s):
                opened = streaming.results(batch_id)
                response = await opened.__aenter__()
            try:
                lines = LineSplitter()
                async for data in response.iter_bytes():
                    if rows := [parse_result(line) for line in lines.feed(data)]:
                        yield rows
                if rows := [parse_result(line) for line in lines.end()]:
                    yield rows
            finally:
                with trio.CancelScope(shield=True):
                    await opened.__aexit__(None, None, None)
        except trio.TooSlowError:
            raise ProviderUnavailable("results: no answer in time") from None
        except Exception as exc:
            raise _translate(exc) from None

    @contextlib.contextmanager
    def _observed(
        self, operation: str, batch_id: str | None, *, current: bool = True
    ) -> Iterator[None]:
        """A span and a duration sample for one provider call, with the
        outcome the caller acts on (a cancelled call records neither)."""
        attributes = {"batchwarden.provider_batch_id": batch_id} if batch_id else {}
        name = f"provider.{operation}"
        span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        started = time.perf_counter()
        outcome = None
        try:
            with _current(span) if current else contextlib.nullcontext():
                yield
            outcome = "success"
        except Exception as exc:
            outcome = _outcome(exc)
            span.set_status(StatusCode.ERROR, str(exc)[:200])
            raise
        finally:
            span.end()
            if self.metrics is not None and outcome is not None:
                elapsed = time.perf_counter() - started
                self.metrics.provider_request.labels(operation, outcome).observe(
                    elapsed
                )

    async def _call(self, call: Callable[[], Any]) -> Any:
        try:
            with trio.fail_after(self.timeout_s + 1):
                return await call()
        except trio.TooSlowError:
            raise ProviderUnavailable("the provider did not answer in time") from None
        except Exception as exc:
            raise _translate(exc) from None


def _outcome(exc: Exception) -> str:
    if isinstance(exc, BatchNotFound):
        return "not_found"
    if isinstance(exc, ProviderRejected):
        return "rejected"
    return "unavailable"


def _current(span: trace.Span):
    """Make `span` the parent of spans opened inside; errors are recorded by
    the caller, and a cancellation (shutdown) is not one."""
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, (ProviderUnavailable, ProviderRejected)):
        return exc
    if isinstance(exc, anthropic.NotFoundError):
        return BatchNotFound(_message(exc))
    if isinstance(exc, (anthropic.RateLimitError, anthropic.InternalServerError)):
        return ProviderUnavailable(_message(exc), _retry_after(exc.response))
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code in (408, 409):
        return ProviderUnavailable(_message(exc))
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code >= 500:
        return ProviderUnavailable(_message(exc))
    if isinstance(exc, anthropic.APIStatusError):
        return ProviderRejected(_message(exc))
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.HTTPError)):
        return ProviderUnavailable(f"connection: {exc}")
    if isinstance(exc, (json.JSONDecodeError, anthropic.APIResponseValidationError)):
        return ProviderUnavailable(f"the provider's answer did not parse: {exc}")
    if isinstance(exc, MalformedResult):
        return ProviderUnavailable(str(exc))
    return exc


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
    kind, text = error.get("type", "error"), error.get("message", str(exc))
    return f"{exc.status_code} {kind}: {text}"


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


def _state(batch: anthropic.types.messages.MessageBatch) -> BatchState:
    return BatchState(
        id=batch.id,
        processing_status=batch.processing_status,
        request_counts=batch.request_counts.model_dump(),
        created_at=batch.created_at,
        ended_at=batch.ended_at,
        expires_at=batch.expires_at,
        archived_at=batch.archived_at,
    )


class MalformedResult(ValueError):
    pass


class LineSplitter:
    """Bytes as they arrive -> the complete, non-empty lines among them,
    decoded. Work is per read, not per line: one search for the last
    newline, one decode, one split."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[str]:
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        return _lines(data[:cut])

    def end(self) -> list[str]:
        """The last line, if the stream did not end with a newline."""
        tail, self._tail = self._tail, b""
        return _lines(tail)


def _lines(data: bytes) -> list[str]:
    text = data.decode(errors="replace")
    if "\r" in text:  # raw CRs only end lines: inside JSON strings they are escaped
        text = text.replace("\r", "")
    return [line for line in text.split("\n") if line]


def parse_result(line: str) -> ResultRow:
    """One results line -> a row to store; MalformedResult if it is not one.
    Most of an ingest's CPU is here, once per item: it avoids needless work
    (an enum lookup by dict, positional records)."""
    try:
        document = orjson.loads(line)
        custom_id = document["custom_id"]
        result = document["result"]
        status = _STATUSES[result["type"]]
    except (ValueError, KeyError, TypeError):
        raise MalformedResult(f"a results line did not parse: {line[:120]!r}") from None
    if not isinstance(custom_id, str) or "\x00" in custom_id:
        raise MalformedResult(f"a results line has a bad custom_id: {line[:120]!r}")
    text = _result_text(line, custom_id) or json.dumps(result)
    if status is ItemStatus.ERRORED:
        return ResultRow(custom_id, status, text, NO_USAGE, None, _error_type(result))
    if status is not ItemStatus.SUCCEEDED:
        return ResultRow(custom_id, status, text)
    message = _object(result.get("message"))
    usage = _object(message.get("usage"))
    counts = Usage(
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens")),
        _count(usage.get("cache_creation_input_tokens")),
        _count(usage.get("cache_read_input_tokens")),
    )
    return ResultRow(custom_id, status, text, counts, _text(message.get("model")))


_STATUSES = {status.value: status for status in ItemStatus if status.value != "pending"}
NO_USAGE = Usage()


def _error_type(result: dict) -> str | None:
    """`invalid_request_error`, `api_error`, ...: the innermost error type
    (the provider nests the API error inside the item's error)."""
    error = _object(result.get("error"))
    inner = _object(error.get("error"))
    return _text(inner.get("type")) or _text(error.get("type"))


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _count(value: object) -> int:
    """A token count as stored: a whole number in range, else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return 0


def _text(value: object) -> str | None:
    """A string the databases can store (PostgreSQL text holds no NUL)."""
    return value.replace("\x00", "") if isinstance(value, str) else None


def _result_text(line: str, custom_id: str) -> str | None:
    """The `result` object's text as the provider sent it, without encoding
    it again, when the line has the usual compact shape; None otherwise."""
    prefix = f'{{"custom_id":"{custom_id}","result":'
    if line.startswith(prefix) and line.endswith("}"):
        return line[len(prefix) : -1]
    return None
