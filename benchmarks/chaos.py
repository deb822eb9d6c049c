"""A chaos soak of three replicas on PostgreSQL; prints its figures.

The soak (`tests/chaos.py`) submits jobs all along while it kills, freezes
and cuts off the leader, restarts PostgreSQL and takes the webhook receiver
down; then it heals everything, waits for every job and callback, and
checks the outcome (`tests/chaos_checks.py`). Exit status 1 if any check
found a violation.

    python benchmarks/chaos.py [--minutes 10] [--seed 1] [--max-items 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine  # noqa: E402
from tests.chaos import Soak, SoakPlan  # noqa: E402
from tests.chaos_checks import check  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-items", type=int, default=200)
    parser.add_argument("--submit-every", type=float, default=1.0, help="seconds")
    args = parser.parse_args()
    print(machine())
    plan = SoakPlan(
        duration_s=args.minutes * 60,
        seed=args.seed,
        max_items=args.max_items,
        submit_every_s=args.submit_every,
    )
    started = time.monotonic()
    with Soak(plan) as soak:
        soak.run()
        findings = check(soak)
    print(f"wall time {time.monotonic() - started:.0f} s")
    print(json.dumps(findings.figures, indent=2))
    for violation in findings.violations:
        print(f"VIOLATION: {violation}")
    print(f"{len(findings.violations)} violations")
    return 1 if findings.violations else 0


if __name__ == "__main__":
    sys.exit(main())
