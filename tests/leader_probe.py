"""A leader-only actor for tests: a fenced write every 20 ms.

Each row in `probe_actions` is proof that a replica acted as leader in a
term at a moment of the database's clock. Start replicas with
`--leader-actor tests.leader_probe:probe` after `create_table`.
"""

from __future__ import annotations

import trio

from batchwarden.supervisor.leadership import LeaderContext

PERIOD_S = 0.02

TABLE = """
CREATE TABLE IF NOT EXISTS probe_actions (
    term bigint NOT NULL,
    holder text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


async def probe(context: LeaderContext) -> None:
    def act(tx) -> None:
        tx.execute(
            "INSERT INTO probe_actions (term, holder) VALUES (%s, %s)",
            (context.term, context.instance_id),
        )

    while True:
        await context.store._fenced(context.term, act)
        await trio.sleep(PERIOD_S)
