"""The mock provider: Anthropic's Message Batches API, with faults on demand.

`MockProvider` holds the batches, the behaviour of new batches, the fault
plan and the statistics; `handle` answers one HTTP request. API routes check
the headers the real API requires (`x-api-key`, `anthropic-version`) and
answer errors in its error shape. Control routes under `/_mock/` need no
key: `GET|PUT /_mock/faults` reads or replaces the fault plan,
`GET /_mock/stats` gives request counts, latencies and injected faults, and
`GET /_mock/batches/{id}/records` gives the outcome the mock chose for every
item, so tests can check what a client stored against the truth.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from batchwarden.mockprovider.batches import Behaviour, Item, MockBatch
from batchwarden.mockprovider.faults import STREAM_KINDS, FaultPlan, Faults
from batchwarden.mockprovider.http import Request, Response
from batchwarden.mockprovider.stats import Stats

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
BATCH_PATH = re.compile(r"^/v1/messages/batches/([A-Za-z0-9_]+)(/cancel|/results)?$")
RECORDS_PATH = re.compile(r"^/_mock/batches/([A-Za-z0-9_]+)/records$")
STREAM_CHUNK = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class MockProvider:
    def __init__(
        self,
        *,
        behaviour: Behaviour | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        api_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.behaviour = behaviour or Behaviour()
        self.faults = Faults(faults or FaultPlan(), seed)
        self.stats = Stats()
        self.api_key = api_key
        self.base_url = "http://127.0.0.1"
        self.batches: dict[str, MockBatch] = {}
        self._clock = clock
        self._rng = random.Random(seed)
        self._seed = seed

    # -- dispatch ------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        endpoint, action = self._route(request)
        try:
            response = await action(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.kind, exc.message)
        if endpoint:
            self.stats.record(endpoint, response.status, time.perf_counter() - started)
        return response

    def _route(
        self, request: Request
    ) -> tuple[str | None, Callable[[Request], Awaitable[Response]]]:
        method, path = request.method, request.path
        if path == "/v1/messages/batches":
            if method == "POST":
                return "create", self._api("create", self._create)
            if method == "GET":
                return "list", self._api("list", self._list)
        found = BATCH_PATH.match(path)
        if found:
            action = {
                ("GET", None): ("retrieve", self._retrieve),
                ("DELETE", None): ("delete", self._delete),
                ("POST", "/cancel"): ("cancel", self._cancel),
                ("GET", "/results"): ("results", self._results),
            }.get((method, found.group(2)))
            if action:
                return action[0], self._api(action[0], action[1])
        return None, self._control

    def _api(
        self, endpoint: str, action: Callable[[Request], Response]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            self._check_headers(request)
            delay = self.faults.delay()
            if delay:
                await trio.sleep(delay)
            fault = self.faults.draw(endpoint)
            if fault is not None:
                return self._fault_response(fault)
            return action(request)

        return run

    def _check_headers(self, request: Request) -> None:
        key = _api_key(request.headers)
        if not key:
            raise ApiError(
                401,
                "authentication_error",
                "an x-api-key header (or Authorization: Bearer) is required",
            )
        if self.api_key is not None and key != self.api_key:
            raise ApiError(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise ApiError(
                400, "invalid_request_error", "anthropic-version: header is required"
            )

    def _fault_response(self, kind: str) -> Response:
        plan = self.faults.plan
        if kind == "429":
            response = error_response(429, "rate_limit_error", "Rate limited")
            response.headers.append(("retry-after", _seconds(plan.retry_after_s)))
            return response
        if kind == "500":
            return error_response(500, "api_error", "Internal server error")
        if kind == "529":
            return error_response(529, "overloaded_error", "Overloaded")
        if kind == "hang":
            return Response(200, hang_s=plan.hang_s)
        return Response(200, b'{"id": "msgbatch_', headers=[("request-id", _rid())])

    # -- the API -----------------------------------------------------------------

    def _create(self, request: Request) -> Response:
        items = parse_create(request.body)
        limit = self.behaviour.queue_limit
        if limit is not None and self._processing_requests() + len(items) > limit:
            return self._queue_full(limit)
        batch_id = "msgbatch_" + _token(24)
        batch = MockBatch(
            batch_id,
            items,
            self.behaviour,
            random.Random(self._rng.getrandbits(64)),
            self._clock(),
        )
        self.batches[batch_id] = batch
        self.stats.batch_created(len(items), self._processing_requests())
        return self._batch_response(batch)

    def _queue_full(self, limit: int) -> Response:
        self.stats.queue_full += 1
        message = f"the processing queue holds at most {limit} requests"
        response = error_response(429, "rate_limit_error", message)
        response.headers.append(
            ("retry-after", _seconds(self.faults.plan.retry_after_s))
        )
        return response

    def _retrieve(self, request: Request) -> Response:
        return self._batch_response(self._batch(request))

    def _list(self, request: Request) -> Response:
        """Newest first; `after_id` pages to older batches, `before_id` to
        newer ones."""
        limit = _limit(request.query.get("limit", "20"))
        ids = list(reversed(self.batches))
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if before:
            end = _index_of(ids, before)
            start = max(0, end - limit)
            page, has_more = ids[start:end], start > 0
        else:
            start = _index_of(ids, after) + 1 if after else 0
            page, has_more = ids[start : start + limit], len(ids) > start + limit
        now = self._clock()
        return json_response(
            {
                "data": [self.batches[i].document(now, self.base_url) for i in page],
                "has_more": has_more,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    def _cancel(self, request: Request) -> Response:
        batch = self._batch(request)
        batch.cancel(self._clock())
        return self._batch_response(batch)

    def _delete(self, request: Request) -> Response:
        batch = self._batch(request)
        if batch.status(self._clock()) != "ended":
            raise ApiError(
                400,
                "invalid_request_error",
                f"Batch {batch.id} cannot be deleted while it is processing;"
                " cancel it first",
            )
        del self.batches[batch.id]
        return json_response({"id": batch.id, "type": "message_batch_deleted"})

    def _results(self, request: Request) -> Response:
        batch = self._batch(request)
        now = self._clock()
        if batch.status(now) != "ended":
            raise ApiError(
                400, "invalid_request_error", f"Batch {batch.id} has not ended yet"
            )
        if now >= batch.archive_at:
            raise ApiError(
                404, "not_found_error", f"Results of {batch.id} have been archived"
            )
        fault = self.faults.draw("results", STREAM_KINDS)
        lines = batch.result_lines()
        if fault == "unknown_ids":
            lines = _with_strangers(lines, batch)
        end = "complete"
        if fault in ("truncate", "drop"):
            lines = _first_half(lines, len(batch))
            end = "close" if fault == "truncate" else "reset"
        return Response(
            200,
            stream=_chunks(lines),
            content_type="application/binary",
            headers=[("request-id", _rid())],
            end=end,
        )

    def _batch(self, request: Request) -> MockBatch:
        batch_id = BATCH_PATH.match(request.path).group(1)
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"Batch {batch_id} not found")
        return batch

    def _batch_response(self, batch: MockBatch) -> Response:
        return json_response(batch.document(self._clock(), self.base_url))

    def _processing_requests(self) -> int:
        now = self._clock()
        return sum(len(b) for b in self.batches.values() if b.status(now) != "ended")

    # -- control -----------------------------------------------------------------

    async def _control(self, request: Request) -> Response:
        method, path = request.method, request.path
        if path == "/_mock/stats" and method == "GET":
            return json_response(self.statistics())
        if path == "/_mock/faults" and method == "GET":
            return json_response(self.faults.plan.document())
        if path == "/_mock/faults" and method == "PUT":
            return self._put_faults(request)
        found = RECORDS_PATH.match(path)
        if found and method == "GET":
            return self._records(found.group(1))
        raise ApiError(404, "not_found_error", f"No route for {method} {path}")

    def _put_faults(self, request: Request) -> Response:
        try:
            plan = FaultPlan.from_document(json.loads(request.body or b"{}"))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ApiError(400, "invalid_request_error", str(exc)) from None
        self.faults.plan = plan
        return json_response(plan.document())

    def _records(self, batch_id: str) -> Response:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"Batch {batch_id} not found")
        if batch.status(self._clock()) != "ended":
            raise ApiError(400, "invalid_request_error", "Batch has not ended yet")
        lines = (json.dumps(batch.record(i)) + "\n" for i in range(len(batch)))
        return Response(200, stream=_chunks(lines), content_type="application/x-ndjson")

    def statistics(self) -> dict[str, Any]:
        return {
            **self.stats.document(),
            "processing_requests": self._processing_requests(),
            "batches": len(self.batches),
            "faults_injected": self.faults.counts(),
        }


# -- request validation ----------------------------------------------------------


def parse_create(body: bytes) -> list[Item]:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request_error", "Body is not valid JSON") from None
    requests = document.get("requests") if isinstance(document, dict) else None
    if not isinstance(requests, list):
        raise ApiError(400, "invalid_request_error", "requests: Field required")
    if not 1 <= len(requests) <= MAX_REQUESTS:
        raise ApiError(
            400,
            "invalid_request_error",
            f"requests: must hold from 1 to {MAX_REQUESTS} items, got {len(requests)}",
        )
    seen: set[str] = set()
    return [_item(index, entry, seen) for index, entry in enumerate(requests)]


def _item(index: int, entry: Any, seen: set[str]) -> Item:
    where = f"requests.{index}"
    if not isinstance(entry, dict):
        _invalid(where, "Input should be an object")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
        _invalid(f"{where}.custom_id", "String should match ^[a-zA-Z0-9_-]{1,64}$")
    if custom_id in seen:
        _invalid(f"{where}.custom_id", f"Duplicate custom_id {custom_id!r}")
    seen.add(custom_id)
    params = entry.get("params")
    if not isinstance(params, dict):
        _invalid(f"{where}.params", "Field required")
    model, max_tokens = params.get("model"), params.get("max_tokens")
    if not isinstance(model, str) or not model:
        _invalid(f"{where}.params.model", "Field required")
    if type(max_tokens) is not int or max_tokens < 1:
        _invalid(f"{where}.params.max_tokens", "Input should be an integer >= 1")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        _invalid(f"{where}.params.messages", "Input should be a non-empty list")
    return Item(custom_id, model, max_tokens, 8 + len(json.dumps(messages)) // 4)


def _invalid(where: str, message: str) -> None:
    raise ApiError(400, "invalid_request_error", f"{where}: {message}")


# -- helpers -----------------------------------------------------------------------


def json_response(document: Any, status: int = 200) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Response(status, body, headers=[("request-id", _rid())])


def error_response(status: int, kind: str, message: str) -> Response:
    request_id = _rid()
    document = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    }
    body = json.dumps(document).encode()
    return Response(status, body, headers=[("request-id", request_id)])


def _api_key(headers: dict[str, str]) -> str | None:
    """The key, from `x-api-key` or, as newer SDKs send it, a bearer token."""
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _rid() -> str:
    return "req_" + secrets.token_hex(12)


def _token(length: int) -> str:
    return secrets.token_urlsafe(length)[:length].replace("-", "A").replace("_", "B")


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_request_error", "limit: must be from 1 to 1000")
    return limit


def _index_of(ids: list[str], batch_id: str) -> int:
    try:
        return ids.index(batch_id)
    except ValueError:
        raise ApiError(404, "not_found_error", f"Batch {batch_id} not found") from None


def _chunks(lines: Iterator[str]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= STREAM_CHUNK:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _first_half(lines: Iterator[str], count: int) -> Iterator[str]:
    """Half the lines, then half of the next one: the stream breaks mid-line."""
    for index, line in enumerate(lines):
        if index >= count // 2:
            yield line[: len(line) // 2]
            return
        yield line


def _with_strangers(lines: Iterator[str], batch: MockBatch) -> Iterator[str]:
    yield from lines
    for number in range(3):
        yield batch.result_line(0).replace(
            f'"custom_id":"{batch.custom_ids[0]}"',
            f'"custom_id":"unknown-{batch.id[-6:]}-{number}"',
            1,
        )
