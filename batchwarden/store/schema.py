"""Versioned schema migrations, one SQL text per dialect.

Migrations only ever append to this list. Each runs in one transaction
together with its row in `schema_migrations`; on PostgreSQL the runner first
takes a transaction-level advisory lock, so replicas starting at once apply
each migration exactly once and the others wait, then find nothing to do.

Keys (job ids, custom ids) compare byte by byte (`COLLATE "C"` on
PostgreSQL, SQLite's default): they are identifiers, not words, and bytewise
comparison makes the primary keys of a 100,000-item ingest cheaper to
maintain than the database's locale collation.

Results live beside the requests (`item_results`), not written over them:
ingesting a provider batch is an append, and a repeated fetch is a no-op on
the primary key.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    postgres: str
    sqlite: str


_JOB_STATUSES = (
    "'created', 'pending', 'running', 'completed', 'failed', 'cancelled', 'expired'"
)
_RESULT_STATUSES = "'succeeded', 'errored', 'canceled', 'expired'"

_INITIAL = """
CREATE TABLE jobs (
    id text {key} PRIMARY KEY,
    status text NOT NULL CHECK (status IN ({job_statuses})),
    item_count integer NOT NULL,
    callback_url text,
    metadata text NOT NULL DEFAULT '{{}}',
    idempotency_key text UNIQUE,
    request_digest text,
    error text,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    finished_at {ts}
);
CREATE INDEX jobs_by_status ON jobs (status, id);

CREATE TABLE provider_batches (
    id {serial},
    job_id text {key} NOT NULL REFERENCES jobs (id),
    attempt integer NOT NULL,
    provider_batch_id text UNIQUE,
    processing_status text NOT NULL,
    request_count integer NOT NULL,
    request_counts text,
    created_at {ts} NOT NULL,
    polled_at {ts},
    ended_at {ts},
    expires_at {ts},
    archived_at {ts},
    results_stored_at {ts}
);
CREATE INDEX provider_batches_by_job ON provider_batches (job_id);

CREATE TABLE items (
    job_id text {key} NOT NULL REFERENCES jobs (id),
    custom_id text {key} NOT NULL,
    position integer NOT NULL,
    params text NOT NULL,
    PRIMARY KEY (job_id, custom_id),
    UNIQUE (job_id, position)
);

CREATE TABLE item_results (
    job_id text {key} NOT NULL,
    custom_id text {key} NOT NULL,
    attempt integer NOT NULL,
    batch_id bigint NOT NULL,
    status text NOT NULL CHECK (status IN ({result_statuses})),
    result text NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint NOT NULL DEFAULT 0,
    cache_read_input_tokens bigint NOT NULL DEFAULT 0,
    model text,
    term bigint NOT NULL,
    PRIMARY KEY (job_id, custom_id, attempt)
);

CREATE TABLE leader (
    id integer PRIMARY KEY CHECK (id = 1),
    holder text,
    term bigint NOT NULL,
    since {ts}
);
INSERT INTO leader (id, term) VALUES (1, 0);

CREATE TABLE leader_terms (
    term bigint PRIMARY KEY,
    holder text NOT NULL,
    since {ts} NOT NULL
);

CREATE TABLE callbacks (
    id text PRIMARY KEY,
    job_id text NOT NULL UNIQUE REFERENCES jobs (id),
    url text NOT NULL,
    payload text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'exhausted')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at {ts} NOT NULL,
    last_error text,
    created_at {ts} NOT NULL,
    delivered_at {ts}
);
CREATE INDEX callbacks_due ON callbacks (status, next_attempt_at);

CREATE TABLE callback_attempts (
    callback_id text NOT NULL REFERENCES callbacks (id),
    attempt integer NOT NULL,
    attempted_at {ts} NOT NULL,
    status_code integer,
    error text,
    duration_seconds double precision,
    PRIMARY KEY (callback_id, attempt)
);
"""


def _initial(ts: str, serial: str, key: str) -> str:
    return _INITIAL.format(
        ts=ts,
        serial=serial,
        key=key,
        job_statuses=_JOB_STATUSES,
        result_statuses=_RESULT_STATUSES,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        postgres=_initial(
            "timestamptz",
            "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            key='COLLATE "C"',
        ),
        sqlite=_initial("text", "INTEGER PRIMARY KEY AUTOINCREMENT", key=""),
    ),
)

_PIPELINE = """
ALTER TABLE jobs ADD COLUMN cancel_requested_at {ts};
ALTER TABLE jobs ADD COLUMN claim_term bigint;
ALTER TABLE provider_batches ADD COLUMN first_position integer;
ALTER TABLE callbacks ADD COLUMN lease_term bigint;
CREATE INDEX provider_batches_open ON provider_batches (processing_status, polled_at)
"""

MIGRATIONS += (
    Migration(
        2,
        "pipeline: cancel requests, claims, batch ranges, callback leases",
        postgres=_PIPELINE.format(ts="timestamptz"),
        sqlite=_PIPELINE.format(ts="text"),
    ),
)

_RETRIES = """
ALTER TABLE item_results ADD COLUMN error_type text
"""

MIGRATIONS += (
    Migration(
        3,
        "item retries: the error type of an errored result",
        postgres=_RETRIES,
        sqlite=_RETRIES,
    ),
)

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at text NOT NULL
)
"""
