"""What a chaos soak must show, checked once it has drained.

Each check reads a source the replicas do not control, compares it with
what they stored or said, and adds figures and violations to `Findings`:

- items: every provider batch the database lists, against the mock
  provider's record of what it decided for each of its items: each
  (job, item, attempt) stored once, with the provider's outcome, error type,
  tokens and model; nothing stored that the provider did not answer;
- jobs: each job's status, against what the provider's outcomes and the
  soak's cancels call for (a cancel answered 200 ends the job `cancelled`,
  whether it was `created` or already at the provider); items left
  retryable only at the attempt limit;
- callbacks: the receiver's log: each job called back at least once, with
  one `webhook-id` (the one the outbox row holds), a valid signature and
  the job's final status;
- fencing: each stored result's term, against the newest term committed
  before the result was (both read from PostgreSQL's commit timestamps);
- leadership: each replica's own log of the terms it led, against the term
  table; where two replicas believed they led at once, the older leader
  must have been cut off, frozen or killed with the server since at least
  a trust window before the newer one began;
- logs: no replica logged an error (a worker that crashed).
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from standardwebhooks.webhooks import Webhook

from tests.chaos import TRUST_WINDOW_S, Incarnation, Soak
from tests.harness import SECRET

MAX_ATTEMPTS = 3
RETRYABLE_ERRORS = {"overloaded_error", "api_error", "rate_limit_error"}


@dataclass
class Findings:
    figures: dict[str, object] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.violations.append(text)


@dataclass
class Term:
    term: int
    holder: str
    incarnation: Incarnation
    start: float
    end: float
    reason: str


def check(soak: Soak) -> Findings:
    findings = Findings()
    job_ids = [s.job_id for s in soak.submissions]
    with psycopg.connect(soak.url) as db:
        records = provider_records(soak, db, job_ids, findings)
        check_items(db, job_ids, records, findings)
        check_jobs(soak, db, records, findings)
        check_callbacks(soak, db, job_ids, findings)
        check_fencing(db, findings)
        terms = logged_terms(soak, db, findings)
    check_leadership(soak, terms, findings)
    check_logs(soak, findings)
    findings.figures["faults injected"] = dict(sorted(soak.faults.items()))
    provider_faults = soak.mock_statistics()["faults_injected"]
    findings.figures["provider faults injected"] = provider_faults
    return findings


# -- items and jobs ------------------------------------------------------------


def provider_records(
    soak: Soak, db: psycopg.Connection, job_ids: list[str], findings: Findings
) -> dict[tuple[str, str, int], dict]:
    """(job, custom_id, attempt) -> the provider's record, for every provider
    batch the database lists."""
    batches = db.execute(
        "SELECT job_id, attempt, provider_batch_id, processing_status,"
        " results_stored_at IS NOT NULL FROM provider_batches"
        " WHERE job_id = ANY(%s)",
        (job_ids,),
    ).fetchall()
    records = {}
    for job_id, attempt, provider_id, status, stored in batches:
        if provider_id is None:
            if status != "skipped":
                findings.fail(f"{job_id}: attempt {attempt} never reached the provider")
            continue
        if not stored:
            findings.fail(f"{job_id}: {provider_id} ({status}) results never stored")
        for record in soak.mock_records(provider_id):
            records[(job_id, record["custom_id"], attempt)] = record
    created = soak.mock_statistics()["batches_created"]
    listed = sum(1 for b in batches if b[2] is not None)
    findings.figures["provider batches"] = listed
    findings.figures["provider batches created twice (known gap)"] = created - listed
    return records


def check_items(
    db: psycopg.Connection,
    job_ids: list[str],
    records: dict[tuple[str, str, int], dict],
    findings: Findings,
) -> None:
    stored = {
        (job_id, custom_id, attempt): rest
        for job_id, custom_id, attempt, *rest in db.execute(
            "SELECT job_id, custom_id, attempt, status, error_type, input_tokens,"
            " output_tokens, model FROM item_results WHERE job_id = ANY(%s)",
            (job_ids,),
        )
    }
    lost = records.keys() - stored.keys()
    extra = stored.keys() - records.keys()
    both = records.keys() & stored.keys()
    wrong = [key for key in both if not _same(records[key], stored[key])]
    kinds = {"lost": lost, "not the provider's": extra, "wrong": wrong}
    for label, keys in kinds.items():
        for key in sorted(keys)[:5]:
            findings.fail(f"result {label}: {key}")
    (items,) = db.execute(
        "SELECT count(*) FROM items WHERE job_id = ANY(%s)", (job_ids,)
    ).fetchone()
    findings.figures["items"] = items
    findings.figures["results stored"] = len(stored)
    findings.figures["results by status"] = dict(Counter(v[0] for v in stored.values()))
    findings.figures["results lost"] = len(lost)
    findings.figures["results not matching the provider"] = len(extra) + len(wrong)


def _same(record: dict, row: list) -> bool:
    status, error_type, input_tokens, output_tokens, model = row
    if record["outcome"] != status or record.get("error_type") != error_type:
        return False
    if status != "succeeded":
        return True
    expected = (record["input_tokens"], record["output_tokens"], record["model"])
    return expected == (input_tokens, output_tokens, model)


def check_jobs(
    soak: Soak,
    db: psycopg.Connection,
    records: dict[tuple[str, str, int], dict],
    findings: Findings,
) -> None:
    final: dict[str, dict[str, tuple[int, dict]]] = defaultdict(dict)
    for (job_id, custom_id, attempt), record in records.items():
        if attempt > final[job_id].get(custom_id, (0, None))[0]:
            final[job_id][custom_id] = (attempt, record)
    statuses = Counter()
    for submission in soak.submissions:
        job_id = submission.job_id
        status, cancel_requested, item_count = db.execute(
            "SELECT status, cancel_requested_at IS NOT NULL, item_count"
            " FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        statuses[status] += 1
        if submission.cancel_answer == 200 or cancel_requested:
            expected = "cancelled"
        else:
            expected = _expected_status(item_count, final[job_id])
        # A cancel whose answer was lost may still have been carried out.
        allowed = {expected, "cancelled"} if submission.cancel_tried else {expected}
        if status not in allowed:
            findings.fail(f"{job_id}: {status}, the provider's outcomes say {expected}")
        if cancel_requested and not submission.cancel_tried:
            findings.fail(f"{job_id}: a cancel was recorded that nobody asked for")
        if status != "cancelled":
            _check_retries(job_id, final[job_id], findings)
    findings.figures["jobs"] = len(soak.submissions)
    findings.figures["jobs by status"] = dict(statuses)


def _expected_status(item_count: int, final: dict[str, tuple[int, dict]]) -> str:
    outcomes = [record["outcome"] for _, record in final.values()]
    if len(outcomes) < item_count or "expired" in outcomes:
        return "expired"
    return "completed"


def _check_retries(
    job_id: str, final: dict[str, tuple[int, dict]], findings: Findings
) -> None:
    for custom_id, (attempt, record) in final.items():
        retryable = record["outcome"] == "expired" or (
            record.get("error_type") in RETRYABLE_ERRORS
        )
        if retryable and attempt < MAX_ATTEMPTS:
            findings.fail(f"{job_id}/{custom_id}: retryable after {attempt} attempts")


# -- callbacks -----------------------------------------------------------------


def check_callbacks(
    soak: Soak, db: psycopg.Connection, job_ids: list[str], findings: Findings
) -> None:
    outbox = {
        job_id: (callback_id, status, job_status)
        for job_id, callback_id, status, job_status in db.execute(
            "SELECT c.job_id, c.id, c.status, j.status FROM callbacks c"
            " JOIN jobs j ON j.id = c.job_id WHERE c.job_id = ANY(%s)",
            (job_ids,),
        )
    }
    by_job: dict[str, list] = defaultdict(list)
    signer = Webhook(SECRET)
    bad_signatures = 0
    for delivery in soak.receiver.deliveries:
        headers = {k.lower(): v for k, v in delivery.headers.items()}
        if not _signed(signer, headers, delivery.body):
            bad_signatures += 1
            continue
        payload = json.loads(delivery.body)
        by_job[payload["data"]["id"]].append((headers["webhook-id"], payload))
    if bad_signatures:
        findings.fail(f"{bad_signatures} deliveries with a bad signature")
    for job_id in job_ids:
        received = by_job.pop(job_id, [])
        _check_job_callbacks(job_id, outbox.get(job_id), received, findings)
    for job_id in by_job:
        findings.fail(f"a callback for a job the soak did not submit: {job_id}")
    deliveries = len(soak.receiver.deliveries)
    (attempts,) = db.execute("SELECT count(*) FROM callback_attempts").fetchone()
    findings.figures["callback deliveries received"] = deliveries
    findings.figures["callback delivery attempts"] = attempts
    findings.figures["duplicate callbacks"] = deliveries - len(job_ids)


def _signed(signer: Webhook, headers: dict[str, str], body: str) -> bool:
    """The HMAC check of `Webhook.verify`, without its five-minute window
    (a soak checks early deliveries long after they arrived)."""
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = signer.sign(headers["webhook-id"], stamp, body).split(",")[1]
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split()]
    return base64.b64decode(expected) in [base64.b64decode(s) for s in given]


def _check_job_callbacks(
    job_id: str, outbox: tuple | None, received: list, findings: Findings
) -> None:
    if outbox is None:
        findings.fail(f"{job_id}: no callback in the outbox")
        return
    callback_id, status, job_status = outbox
    if status != "delivered" or not received:
        findings.fail(f"{job_id}: callback {status}, {len(received)} received")
    if {webhook_id for webhook_id, _ in received} - {callback_id}:
        findings.fail(f"{job_id}: more than one webhook-id")
    for _, payload in received:
        if payload["data"]["status"] != job_status:
            findings.fail(f"{job_id}: called back {payload['data']['status']}")


# -- fencing and leadership ----------------------------------------------------


def check_fencing(db: psycopg.Connection, findings: Findings) -> None:
    """Each result carries the newest term committed before it was."""
    stale, total = db.execute(
        "WITH began AS (SELECT term, pg_xact_commit_timestamp(xmin) AS at"
        "   FROM leader_terms),"
        " written AS (SELECT term, pg_xact_commit_timestamp(xmin) AS at"
        "   FROM item_results)"
        " SELECT count(*) FILTER (WHERE w.term <> (SELECT max(b.term) FROM began b"
        "   WHERE b.at < w.at)), count(*) FROM written w"
    ).fetchone()
    findings.figures["results written under a stale term"] = stale
    if stale or not total:
        findings.fail(f"{stale} of {total} results carry a stale term")


def logged_terms(soak: Soak, db: psycopg.Connection, findings: Findings) -> list[Term]:
    """The terms the replicas' logs say they led, checked against the term
    table: each term led by the holder the table names, and only once."""
    terms = []
    for incarnation in soak.incarnations:
        terms += _terms_of(incarnation, soak.ended_at)
    table = dict(db.execute("SELECT term, holder FROM leader_terms").fetchall())
    logged = Counter(t.term for t in terms)
    for term in terms:
        if table.get(term.term) != term.holder or logged[term.term] > 1:
            findings.fail(
                f"term {term.term}: logged by {term.holder}, table says"
                f" {table.get(term.term)}, logged {logged[term.term]} times"
            )
    return sorted(terms, key=lambda t: t.term)


def _terms_of(incarnation: Incarnation, ended_at: float) -> list[Term]:
    terms: list[Term] = []
    for event in incarnation.replica.events():
        at = datetime.fromisoformat(event["ts"]).timestamp()
        message = event["message"]
        if message.startswith("leading in term "):
            term = event["term"]
            end, reason = ended_at, "running at the end"
            if incarnation.killed_at is not None:
                end, reason = incarnation.killed_at, "killed"
            terms.append(Term(term, incarnation.name, incarnation, at, end, reason))
        elif message.startswith("stepped down: ") and terms:
            terms[-1].end = at
            terms[-1].reason = message.removeprefix("stepped down: ")
    return terms


def check_leadership(soak: Soak, terms: list[Term], findings: Findings) -> None:
    overlaps = []
    for older, newer in zip(terms, terms[1:], strict=False):
        if older.end <= newer.start:
            continue
        overlaps.append(older.end - newer.start)
        if not _lost_trust(soak, older, newer.start):
            findings.fail(
                f"terms {older.term} ({older.holder}) and {newer.term}"
                f" ({newer.holder}) both led for {older.end - newer.start:.2f} s"
            )
    findings.figures["hand-overs"] = max(len(terms) - 1, 0)
    reasons = Counter(t.reason for t in terms)
    findings.figures["step-downs by reason"] = dict(reasons.most_common())
    findings.figures["overlapping beliefs (older leader impaired)"] = len(overlaps)
    gap, at = _longest_gap(soak, terms)
    findings.figures["longest time without a leader (s)"] = round(gap, 2)
    findings.figures["... which began (s into the soak)"] = round(at - soak.started_at)
    findings.figures["step-downs with no fault on that leader"] = sum(
        1 for term in terms if _unprovoked(soak, term)
    )


def _impairments(
    soak: Soak, incarnation: Incarnation, *, frozen: bool = True
) -> list[float]:
    """When this process stopped being able to act as a leader."""
    spans = incarnation.silenced + (incarnation.frozen if frozen else [])
    starts = [span[0] for span in spans]
    starts += [at for at, kind, _ in soak.events if kind == "postgres"]
    if incarnation.killed_at is not None:
        starts.append(incarnation.killed_at)
    return starts


def _lost_trust(soak: Soak, older: Term, newer_start: float) -> bool:
    """Whether the older leader's trust had run out when the newer began:
    frozen or cut off a trust window before, or its lock gone with a
    server restart and the older leader gone within its window."""
    for at in _impairments(soak, older.incarnation):
        if older.start <= at <= newer_start - TRUST_WINDOW_S:
            return True
    restarts = [at for at, kind, _ in soak.events if kind == "postgres"]
    return any(
        older.start <= at <= newer_start and older.end <= at + TRUST_WINDOW_S
        for at in restarts
    )


def _longest_gap(soak: Soak, terms: list[Term]) -> tuple[float, float]:
    """The longest stretch with no replica able to act as leader, and when
    it began."""
    spans = sorted(span for term in terms for span in _acting(soak, term))
    longest, began = 0.0, soak.started_at
    covered = spans[0][1] if spans else 0.0
    for start, end in spans[1:]:
        if start - covered > longest:
            longest, began = start - covered, covered
        covered = max(covered, end)
    return longest, began


def _acting(soak: Soak, term: Term) -> list[tuple[float, float]]:
    """The stretches of a term in which its leader could act: the term less
    the time it was frozen, and less everything after it was cut off,
    killed, or its server restarted (each of which ends a term)."""
    end = min(
        [term.end]
        + [
            at
            for at in _impairments(soak, term.incarnation, frozen=False)
            if at >= term.start
        ]
    )
    spans, start = [], term.start
    for stopped, resumed in sorted(term.incarnation.frozen):
        if stopped >= end or (resumed is not None and resumed <= start):
            continue
        spans.append((start, max(start, stopped)))
        start = resumed if resumed is not None else end
    spans.append((start, end))
    return [(a, b) for a, b in spans if b > a]


def _unprovoked(soak: Soak, term: Term) -> bool:
    """A step-down that no fault explains: the leader was not frozen, cut
    off or killed, and PostgreSQL did not restart, while it led."""
    if term.reason in ("shutdown", "running at the end", "killed"):
        return False
    return not any(
        term.start <= at <= term.end for at in _impairments(soak, term.incarnation)
    )


def check_logs(soak: Soak, findings: Findings) -> None:
    """Faults cost time, not crashes: no replica logs an error."""
    errors = Counter(
        event["message"]
        for incarnation in soak.incarnations
        for event in incarnation.replica.events()
        if event.get("level") == "error"
    )
    findings.figures["errors logged"] = dict(errors)
    for message, count in errors.items():
        findings.fail(f"logged {count} times at error level: {message}")
