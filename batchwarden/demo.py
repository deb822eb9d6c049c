"""`batchwarden demo`: the whole system on one machine, with nothing set up.

In one process and one trio nursery: the mock provider, a webhook receiver
that checks signatures, and a replica (`run`) on a SQLite file in a new
temporary directory. The demo submits a job of a few hundred requests,
shows its progress until it ends, shows the callback the receiver got, and
writes the results beside the database.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from batchwarden import logs, service
from batchwarden.callback_urls import CallbackPolicy
from batchwarden.config import Secret, Settings
from batchwarden.documents import result_line
from batchwarden.intake import Request
from batchwarden.mockprovider import Behaviour, Duration, MockProvider, serve_mock
from batchwarden.mockprovider.http import Request as HttpRequest
from batchwarden.mockprovider.http import Response, serve
from batchwarden.pricing import Price, PriceTable
from batchwarden.progress import follow, outcome_line
from batchwarden.store import SqlStore, open_store
from batchwarden.supervisor import run as supervisor

# The receiver runs on this machine, an address callbacks may not reach
# unless allowed.
ALLOWLIST = ("127.0.0.1",)
# Example batch prices (USD per million tokens) so the demo can show a cost;
# batchwarden ships no prices: set PRICES for yours.
EXAMPLE_PRICES = PriceTable({"claude-sonnet-4-5": Price(1.5, 7.5, 1.875, 0.15)})
TOPICS = ("tides", "photosynthesis", "binary heaps", "the Doppler effect", "TCP")


class DemoReceiver:
    """Records callbacks and whether their signatures verify."""

    def __init__(self, secret: str) -> None:
        self.checker = Webhook(secret)
        self.received: list[tuple[str, bool, dict]] = []
        self.arrived = trio.Event()

    async def handle(self, request: HttpRequest) -> Response:
        body = request.body.decode()
        try:
            payload, valid = self.checker.verify(body, request.headers), True
        except WebhookVerificationError:
            payload, valid = json.loads(body), False
        self.received.append((request.headers.get("webhook-id", ""), valid, payload))
        self.arrived.set()
        return Response(204)


def sample_requests(count: int) -> list[Request]:
    requests = []
    for number in range(count):
        topic = TOPICS[number % len(TOPICS)]
        params = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 200,
            "messages": [{"role": "user", "content": f"Explain {topic} ({number})."}],
        }
        requests.append(Request(f"demo-{number:04d}", json.dumps(params)))
    return requests


def main(items: int = 300) -> int:
    logs.configure("error")
    folder = Path(tempfile.mkdtemp(prefix="batchwarden-demo-"))
    return trio.run(_demo, folder, items)


async def _demo(folder: Path, items: int) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    provider = MockProvider(
        behaviour=Behaviour(
            processing=Duration("uniform", 2.0, 4.0), mix=(0.97, 0.03, 0.0)
        ),
        seed=7,
    )
    receiver = DemoReceiver(secret)
    database = f"sqlite:///{folder / 'batchwarden.db'}"
    say(f"batchwarden demo in {folder}")
    async with trio.open_nursery() as nursery:
        provider_port = await nursery.start(serve_mock, provider)
        receiver_port = await nursery.start(serve, receiver.handle, "127.0.0.1", 0)
        settings = Settings(
            database_url=database,
            port=0,
            provider_url=f"http://127.0.0.1:{provider_port}",
            anthropic_api_key=Secret("demo-key"),
            webhook_secret=Secret(secret),
            poll_interval=0.5,
            instance_id="demo",
            batch_max_requests=50,
            callback_allowlist=ALLOWLIST,
            prices=EXAMPLE_PRICES,
        )
        nursery.start_soon(partial(supervisor.run, settings, announce=False))
        client = open_store(database, instance_id="demo-client", prices=EXAMPLE_PRICES)
        async with client as store:
            code = await _follow(store, receiver, receiver_port, folder, items)
        nursery.cancel_scope.cancel()
    return code


async def _follow(
    store: SqlStore,
    receiver: DemoReceiver,
    receiver_port: int,
    folder: Path,
    items: int,
) -> int:
    url = f"http://127.0.0.1:{receiver_port}/callback"
    job, _ = await service.create_job(
        store,
        sample_requests(items),
        callback_url=url,
        metadata={"demo": True},
        policy=CallbackPolicy(ALLOWLIST),
    )
    say(f"submitted {job.id}: {items} requests, callback to {url}")
    with trio.fail_after(50):
        detail = await follow(store, job.id, sys.stdout)
        say(outcome_line(detail))
        await receiver.arrived.wait()
    webhook_id, valid, payload = receiver.received[0]
    say(
        f"callback received: {payload['type']}, webhook-id {webhook_id},"
        f" signature {'valid' if valid else 'INVALID'}"
    )
    usage = detail.usage
    say(f"tokens: {usage.input_tokens} in, {usage.output_tokens} out")
    say(f"cost: ${detail.cost['total']:.4f} at example batch prices")
    results = folder / "results.jsonl"
    with results.open("w") as out:
        async for item in store.iter_items(job.id):
            out.write(result_line(item) + "\n")
    say(f"results: {results}")
    return 0 if valid and detail.job.status.terminal else 1


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
