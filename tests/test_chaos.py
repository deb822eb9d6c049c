"""The short chaos soak: three replicas on PostgreSQL, the mock provider's
faults, the leader killed, frozen and cut off, PostgreSQL restarted, the
receiver down and slow; then nothing may be lost (tests/chaos_checks.py).

`benchmarks/chaos.py` runs the same soak for longer and prints its figures.
The last step spoils the stored outcome in five ways, one per kind of
check, and asserts that the checks report each: they can fail.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from tests.chaos import FAULTS, Soak, SoakPlan
from tests.chaos_checks import check
from tests.harness import SECRET
from tests.receiver import Delivery

pytestmark = pytest.mark.slow

PLAN = SoakPlan(duration_s=75.0, seed=7, max_items=100, fault_every_s=(3.0, 6.0))


def test_a_short_soak_loses_nothing_and_its_checks_can_fail():
    with Soak(PLAN) as soak:
        soak.run()
        findings = check(soak)
        assert findings.violations == []
        figures = findings.figures
        assert figures["jobs"] >= 30
        assert figures["results lost"] == 0
        assert figures["results written under a stale term"] == 0
        assert figures["hand-overs"] >= 3
        injected = " ".join(figures["faults injected"])
        for kind in ("SIGKILL", "SIGSTOP", "cut off", "postgres", "receiver"):
            assert kind in injected, f"no {kind} fault in {len(FAULTS)} kinds"
        spoil(soak)
        spoiled = "\n".join(check(soak).violations)
        for expected in (
            "result lost",
            "carry a stale term",
            "the provider's outcomes say",
            "bad signature",
            "more than one webhook-id",
            "both led",
        ):
            assert expected in spoiled


def spoil(soak: Soak) -> None:
    """One wrong thing for each check to find."""
    with psycopg.connect(soak.url) as db:
        db.execute(
            "DELETE FROM item_results WHERE ctid = (SELECT ctid FROM item_results"
            " WHERE status = 'succeeded' LIMIT 1)"
        )
        db.execute(
            "UPDATE item_results SET term = term - 1 WHERE ctid ="
            " (SELECT ctid FROM item_results WHERE term > 1 LIMIT 1)"
        )
        db.execute(
            "UPDATE jobs SET status = 'expired' WHERE id = (SELECT id FROM jobs"
            " WHERE status = 'completed' LIMIT 1)"
        )
    first = soak.receiver.deliveries[0]
    forged = replace(first, body=first.body.replace('"type":"job.', '"type":"x.'))
    soak.receiver.deliveries += [forged, _signed_anew(first, "msg_other")]
    _claim_the_newest_term(soak)


def _signed_anew(delivery: Delivery, webhook_id: str) -> Delivery:
    """The same callback, validly signed, under another webhook-id: what a
    sender that made a new id per attempt would send."""
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    signature = Webhook(SECRET).sign(webhook_id, stamp, delivery.body)
    headers |= {"webhook-id": webhook_id, "webhook-signature": signature}
    return replace(delivery, headers=headers)


def _claim_the_newest_term(soak: Soak) -> None:
    """A line in one replica's log saying it led the newest term, while the
    replica that holds that term led it."""
    with psycopg.connect(soak.url) as db:
        term, holder, since = db.execute(
            "SELECT term, holder, since FROM leader_terms ORDER BY term DESC LIMIT 1"
        ).fetchone()
    impostor = next(i for i in reversed(soak.incarnations) if i.name != holder)
    at = datetime.fromtimestamp(since.timestamp() + 0.5, UTC).isoformat()
    line = {"ts": at, "level": "info", "message": f"leading in term {term + 1}"}
    line["term"] = term + 1
    with open(impostor.replica.log_path, "a") as log:
        log.write(json.dumps(line) + "\n")
