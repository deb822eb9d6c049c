"""`batchwarden mock-provider`: flags, and serving until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from batchwarden.mockprovider import serve_mock
from batchwarden.mockprovider.batches import Behaviour, Duration
from batchwarden.mockprovider.faults import FaultPlan, parse_fault_flag
from batchwarden.mockprovider.provider import MockProvider


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8400, help="0 picks a free port")
    add("--seed", type=int, help="makes every outcome and fault reproducible")
    add("--api-key", help="the only key accepted (default: any non-empty key)")
    add(
        "--processing-time",
        default="2",
        help="seconds a batch stays in progress: SECONDS, uniform:LOW,HIGH"
        " or exponential:MEAN (default 2)",
    )
    add("--time-scale", type=float, default=1.0, help="provider seconds per second")
    add("--lifetime", type=float, default=86_400.0, help="seconds until expiry")
    add("--archive-after", type=float, default=29 * 86_400.0)
    add("--cancel-delay", type=float, default=1.0, help="seconds in canceling")
    add(
        "--outcomes",
        default="succeeded=1",
        help="item outcome mix, e.g. succeeded=0.9,errored=0.05,expired=0.05",
    )
    add(
        "--error-types",
        default="invalid_request_error=1",
        help="mix of errored items' types, e.g. invalid_request_error=1,api_error=1",
    )
    add(
        "--queue-limit",
        type=int,
        help="most requests in progress at once; a create past it gets a 429",
    )
    add("--latency", type=float, default=0.0, help="seconds added to each answer")
    add("--jitter", type=float, default=0.0, help="up to this many more seconds")
    add("--retry-after", type=float, default=1.0, help="retry-after of a 429")
    add("--hang", type=float, default=300.0, help="seconds a hanging request waits")
    add(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT:KIND=RATE",
        help="e.g. retrieve:429=0.1, *:500=0.01, results:truncate=0.2",
    )


def _weights(text: str, names: tuple[str, ...] | None, flag: str) -> dict[str, float]:
    weights = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if weight < 0 or (names is not None and name not in names):
            raise ValueError(f"{flag} {part!r}: use NAME=WEIGHT with NAME in {names}")
        weights[name] = weight
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"{flag}: at least one weight must be above 0")
    return weights


def build_provider(args: argparse.Namespace) -> MockProvider:
    """A provider from parsed flags; ValueError names the bad flag."""
    mix = _weights(args.outcomes, ("succeeded", "errored", "expired"), "--outcomes")
    behaviour = Behaviour(
        processing=Duration.parse(args.processing_time),
        lifetime_s=args.lifetime,
        archive_after_s=args.archive_after,
        cancel_delay_s=args.cancel_delay,
        time_scale=args.time_scale,
        mix=tuple(mix.get(k, 0.0) for k in ("succeeded", "errored", "expired")),
        error_types=_weights(args.error_types, None, "--error-types"),
        queue_limit=args.queue_limit,
    )
    if args.queue_limit is not None and args.queue_limit < 1:
        raise ValueError("--queue-limit: must be at least 1")
    if args.time_scale <= 0:
        raise ValueError("--time-scale: must be above 0")
    plan = FaultPlan(
        latency_s=args.latency,
        jitter_s=args.jitter,
        retry_after_s=args.retry_after,
        hang_s=args.hang,
    )
    for text in args.fault:
        parse_fault_flag(plan, text)
    return MockProvider(
        behaviour=behaviour, faults=plan, seed=args.seed, api_key=args.api_key
    )


def run(args: argparse.Namespace) -> int:
    try:
        provider = build_provider(args)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        trio.run(_serve, provider, args.host, args.port)
    except OSError as exc:
        sys.stderr.write(f"error: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(provider: MockProvider, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop at once (exit 0)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_mock, provider, host, port)
            print(f"mock provider listening on {provider.base_url}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
