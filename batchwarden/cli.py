"""The `batchwarden` command.

Each verb is a small async function over the service layer. With `--json`
a verb prints exactly one JSON document (JSON lines for `results`) on
stdout; errors go to stderr, one line per problem, with an exit code that
says what kind of problem it was:

    2  bad input or settings      3  unknown job
    4  conflict (illegal move)    5  database unavailable
    6  `submit --wait`: the job ended, but not `completed`
    1  anything else
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from batchwarden import __version__, logs, service
from batchwarden.callback_urls import CallbackPolicy
from batchwarden.config import PARSERS, Settings, flag_name, load_settings
from batchwarden.errors import (
    BatchwardenError,
    ConfigError,
    Conflict,
    IllegalTransition,
    InvalidRequests,
    JobNotFound,
    RetryLater,
)
from batchwarden.intake import parse_jsonl
from batchwarden.mockprovider import cli as mockprovider_cli
from batchwarden.progress import follow, outcome_line
from batchwarden.states import JobStatus
from batchwarden.store import SqlStore, open_store

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidRequests, 2),
    (ConfigError, 2),
    (JobNotFound, 3),
    (IllegalTransition, 4),
    (Conflict, 4),
    (RetryLater, 5),
)

EXIT_NOT_COMPLETED = 6

Verb = Callable[[argparse.Namespace, SqlStore, Settings], Awaitable[int | None]]


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def out_json(document: Any) -> None:
    out(json.dumps(document, indent=2))


async def cmd_migrate(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> None:
    applied = await store.migrate()
    if args.json:
        out_json({"applied": applied})
    elif applied:
        out(f"applied migrations: {', '.join(map(str, applied))}")
    else:
        out("schema is up to date")


async def cmd_submit(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> int:
    requests = _read_requests(args.file)
    metadata = _parse_metadata(args.metadata)
    job, _ = await service.create_job(
        store,
        requests,
        callback_url=args.callback_url,
        metadata=metadata,
        policy=CallbackPolicy(settings.callback_allowlist),
    )
    if not args.json:
        out(f"{job.id} created with {job.item_count} items")
    return await _follow_new_job(args, store, job)


async def cmd_track(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> int:
    job, _ = await service.track_batch(
        store,
        args.provider_batch_id,
        callback_url=args.callback_url,
        metadata=_parse_metadata(args.metadata),
        policy=CallbackPolicy(settings.callback_allowlist),
    )
    if not args.json:
        out(f"{job.id} tracks provider batch {args.provider_batch_id}")
    return await _follow_new_job(args, store, job)


async def _follow_new_job(args: argparse.Namespace, store: SqlStore, job) -> int:
    """Print the new job, or with `--wait` follow it to its end."""
    if not args.wait:
        if args.json:
            out_json(service.job_document(await store.job_detail(job.id)))
        return 0
    detail = await follow(store, job.id, sys.stderr)
    if args.json:
        out_json(service.job_document(detail))
    else:
        out(outcome_line(detail))
    return 0 if detail.job.status is JobStatus.COMPLETED else EXIT_NOT_COMPLETED


def _read_requests(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as lines:
            return parse_jsonl(lines)
    except OSError as exc:
        raise InvalidRequests([f"cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise InvalidRequests([f"{path} is not UTF-8 text"]) from None
    except InvalidRequests as exc:
        raise InvalidRequests([f"{path} {p}" for p in exc.problems]) from None


def _parse_metadata(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequests([f"--metadata: not valid JSON ({exc.msg})"]) from None
    if not isinstance(value, dict):
        raise InvalidRequests(["--metadata: must be a JSON object"])
    return value


async def cmd_jobs(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> None:
    status = JobStatus(args.status) if args.status else None
    jobs = await store.list_jobs(status=status, before=args.cursor, limit=args.limit)
    summaries = [service.job_summary(job) for job in jobs]
    if args.json:
        out_json({"jobs": summaries, "next_cursor": _cursor(jobs, args.limit)})
        return
    for job in summaries:
        items = job["item_count"]
        out(f"{job['id']}  {job['status']:<9}  {items:>7}  {job['created_at']}")


def _cursor(jobs: list, limit: int) -> str | None:
    return jobs[-1].id if len(jobs) == limit else None


async def cmd_status(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> None:
    document = service.job_document(await store.job_detail(args.job_id))
    if args.json:
        out_json(document)
        return
    out(f"{document['id']}: {document['status']}")
    counts = document["request_counts"]
    out("items: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    if document["error"]:
        out(f"error: {document['error']}")


async def cmd_results(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> None:
    lines = store.iter_items(args.job_id)
    if args.output is None:
        async for item in lines:
            out(service.result_line(item))
        return
    count = 0
    with open(args.output, "w", encoding="utf-8") as target:
        async for item in lines:
            line = service.result_line(item)
            target.write(line + "\n")
            count += 1
    if args.json:
        out_json({"output": str(Path(args.output).resolve()), "items": count})
    else:
        out(f"wrote {count} items to {args.output}")


async def cmd_cancel(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> None:
    job = await service.cancel_job(store, args.job_id)
    if args.json:
        out_json(service.job_document(await store.job_detail(job.id)))
    elif job.status.terminal:
        out(f"{job.id} cancelled")
    else:
        out(f"{job.id}: cancel requested; the leader cancels its provider batches")


async def cmd_leader(
    args: argparse.Namespace, store: SqlStore, settings: Settings
) -> None:
    leader = await store.leader()
    document = {
        "instance_id": leader.holder,
        "term": leader.term,
        "since": service.iso(leader.since),
    }
    if args.json:
        out_json(document)
    elif leader.holder is None:
        out("no leader has been elected yet")
    else:
        out(f"{leader.holder} leads in term {leader.term} since {document['since']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchwarden", description="Runs LLM batch jobs to completion."
    )
    parser.add_argument("--version", action="version", version=__version__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, handler: Verb, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--database-url", help="overrides BATCHWARDEN_DATABASE_URL")
        sub.add_argument("--json", action="store_true", help="print JSON only")
        sub.set_defaults(handler=handler)
        return sub

    verb("migrate", cmd_migrate, "apply schema migrations and exit")
    submit = verb("submit", cmd_submit, "create a job from a JSON lines file")
    submit.add_argument("file", metavar="FILE.jsonl")
    track = verb("track", cmd_track, "create a job that follows a provider batch")
    track.add_argument("provider_batch_id", metavar="PROVIDER_BATCH_ID")
    for creating in (submit, track):
        creating.add_argument("--callback-url")
        creating.add_argument("--metadata", metavar="JSON")
        creating.add_argument(
            "--wait",
            action="store_true",
            help="show progress on stderr until the job ends (a replica must run)",
        )
    jobs = verb("jobs", cmd_jobs, "list jobs, newest first")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument(
        "--cursor", metavar="JOB_ID", help="the next_cursor of the previous page"
    )
    jobs.add_argument("--limit", type=int, default=50)
    status = verb("status", cmd_status, "show one job")
    status.add_argument("job_id", metavar="JOB_ID")
    results = verb("results", cmd_results, "print a job's items as JSON lines")
    results.add_argument("job_id", metavar="JOB_ID")
    results.add_argument("--output", metavar="FILE")
    cancel = verb("cancel", cmd_cancel, "cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    verb("leader", cmd_leader, "show the current leader")
    demo = verbs.add_parser(
        "demo",
        help="one command, no setup: SQLite, the mock provider, a sample job",
        description="Run the whole system on a sample job, in one process.",
    )
    demo.add_argument("--items", type=int, default=300, help="requests in the job")
    run = verbs.add_parser(
        "run",
        help="the long-running process (every replica)",
        description="Run a replica: HTTP server, leader election, leader actors.",
    )
    for name in PARSERS:
        run.add_argument(flag_name(name), dest=name, metavar="VALUE")
    run.add_argument(
        "--leader-actor",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="an extra actor to run while this replica leads",
    )
    mock = verbs.add_parser(
        "mock-provider",
        help="serve the mock Anthropic batch API",
        description="Serve a mock of Anthropic's Message Batches API.",
    )
    mockprovider_cli.add_arguments(mock)
    return parser


async def _run_verb(args: argparse.Namespace, settings: Settings) -> int | None:
    migrate = args.verb != "migrate"
    async with open_store(
        settings.database_url,
        instance_id=settings.instance_id,
        migrate=migrate,
        prices=settings.prices,
    ) as store:
        return await args.handler(args, store, settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "mock-provider":
        return mockprovider_cli.run(args)
    if args.verb == "run":
        return _run_replica(args)
    if args.verb == "demo":
        # Imported here: the verbs that only read the database start in a
        # fraction of the time without the SDK, FastAPI and hypercorn.
        from batchwarden import demo

        return demo.main(args.items)
    try:
        settings = load_settings(flags={"database_url": args.database_url})
        logs.configure("warning", settings.log_format)
        code = trio.run(_run_verb, args, settings)
    except BatchwardenError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code or 0


def _run_replica(args: argparse.Namespace) -> int:
    from batchwarden.supervisor import run as supervisor
    from batchwarden.telemetry import tracing

    try:
        settings = load_settings(flags={name: getattr(args, name) for name in PARSERS})
        logs.configure(settings.log_level, settings.log_format)
        tracing.configure(settings.instance_id)
        actors = [supervisor.load_actor(spec) for spec in args.leader_actor]
        supervisor.freeze_startup_heap()
        trio.run(supervisor.run, settings, actors)
    except BatchwardenError as exc:
        return _report(exc)
    except (ImportError, AttributeError) as exc:
        sys.stderr.write(f"error: --leader-actor: {exc}\n")
        return 2
    return 0


def _report(exc: BatchwardenError) -> int:
    problems = exc.problems if isinstance(exc, InvalidRequests) else [str(exc)]
    for problem in problems:
        sys.stderr.write(f"error: {problem}\n")
    return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 1)


if __name__ == "__main__":
    sys.exit(main())
