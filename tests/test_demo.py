"""`batchwarden demo`, run the way the README says, in a clean directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "batchwarden"


def test_the_demo_runs_a_job_to_its_callback(tmp_path):
    shown = subprocess.run(
        [str(SCRIPT), "demo"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.startswith("job completed: ") for line in lines)
    callback = next(line for line in lines if line.startswith("callback received"))
    assert "job.completed" in callback and "signature valid" in callback
    results = Path(lines[-1].removeprefix("results: "))
    items = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(items) == 300
    assert {item["status"] for item in items} <= {"succeeded", "errored"}
    assert list(tmp_path.iterdir()) == [], "the demo leaves the directory clean"
