"""What metrics and tracing cost: load.py's phases with telemetry off and on.

Off: every metric is a no-op object and no tracer provider is set (the
OpenTelemetry API's default, what a replica runs without
OTEL_EXPORTER_OTLP_ENDPOINT). On: the real Prometheus metrics, and every
span recorded and exported over OTLP/HTTP by a batch processor to a sink in
another process. Each round runs in a new process with a new mock provider
(in its own process) and scratch PostgreSQL databases, alternating off and
on; medians over the rounds are reported, next to each phase's floor from
load.py (bare retrieves; a bare client doing the provider's part), which
shows how noisy the machine was.

(a) one poll cycle over N running provider batches (default 2,000);
(c) J jobs of K items from submit to callback (default 100 x 100).

    python benchmarks/telemetry.py [--batches 2000] [--jobs 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchwarden.supervisor import run as supervisor_run  # noqa: E402
from batchwarden.telemetry.metrics import Metrics  # noqa: E402
from benchmarks import load  # noqa: E402
from benchmarks.common import ScratchDatabase, add_postgres_url, machine  # noqa: E402

SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class _Null:
    """Stands for any metric or metric child: every call does nothing."""

    def labels(self, *args, **kwargs) -> _Null:
        return self

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class NullMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        for name, value in list(vars(self).items()):
            if name != "registry" and hasattr(value, "labels"):
                setattr(self, name, _Null())


def run_phases(args: argparse.Namespace, mock_urls: tuple[str, str]) -> dict:
    slow_mock, fast_mock = mock_urls
    with ScratchDatabase(args.postgres_url) as url:
        poll, poll_floor = trio.run(load.poll_phase, url, slow_mock, args.batches)
    with ScratchDatabase(args.postgres_url) as url:
        jobs, jobs_floor = trio.run(
            load.jobs_phase, url, fast_mock, args.jobs, args.job_items
        )
    return {
        "poll": poll,
        "poll_floor": poll_floor,
        "jobs": jobs,
        "jobs_floor": jobs_floor,
    }


def switch_off() -> None:
    load.Metrics = NullMetrics
    supervisor_run.Metrics = NullMetrics


def switch_on(sink_url: str) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    load.Metrics = Metrics
    supervisor_run.Metrics = Metrics
    provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=f"{sink_url}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def one_round(args: argparse.Namespace) -> None:
    """Child process: one round in one mode; prints its figures as JSON."""
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE)
    slow, slow_url = load.start_mock("3600")
    fast, fast_url = load.start_mock("0.5")
    try:
        sink_url = f"http://127.0.0.1:{sink.stdout.readline().decode().strip()}"
        switch_on(sink_url) if args.mode == "on" else switch_off()
        figures = run_phases(args, (slow_url, fast_url))
    finally:
        for process in (sink, slow, fast):
            process.terminate()
    print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2_000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--job-items", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("off", "on"), help=argparse.SUPPRESS)
    add_postgres_url(parser)
    args = parser.parse_args()
    if args.mode is not None:
        one_round(args)
        return
    print(machine())
    print(f"command: python benchmarks/telemetry.py {' '.join(sys.argv[1:])}".rstrip())
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--mode", mode],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    def median(mode: str, key: str) -> float:
        return statistics.median(round_[key] for round_ in results[mode])

    phases = [
        ("poll", f"(a) poll cycle over {args.batches:,} batches"),
        ("jobs", f"(c) {args.jobs} jobs x {args.job_items} items, submit to callback"),
    ]
    for key, title in phases:
        off, on = median("off", key), median("on", key)
        floors = median("off", f"{key}_floor"), median("on", f"{key}_floor")
        print(
            f"{title}: off {off:.2f} s, on {on:.2f} s, ratio {on / off:.2f}x"
            f" (floors {floors[0]:.2f} s / {floors[1]:.2f} s;"
            f" medians of {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
