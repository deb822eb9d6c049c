"""Find Prometheus' `promtool`, fetching it from Debian's archive if needed.

On PATH it is used as is. Otherwise the `prometheus` package is downloaded
with `apt-get download` (no root, nothing installed) and unpacked into
`.cache/promtool/` of the checkout, once. If neither works the caller gets
an error that says what to install: the rule and metrics checks are part of
the suite and are never skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHED = ROOT / ".cache" / "promtool" / "usr" / "bin" / "promtool"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if not CACHED.exists():
        _fetch()
    return str(CACHED)


def _fetch() -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            subprocess.run(
                ["apt-get", "download", "prometheus"],
                cwd=folder,
                check=True,
                capture_output=True,
                timeout=300,
            )
            (package,) = Path(folder).glob("prometheus_*.deb")
            target = CACHED.parents[2]
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["dpkg-deb", "-x", str(package), str(target)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise RuntimeError(
                "promtool is needed for the rule and metrics checks and could not"
                f" be fetched ({exc}); install it: apt-get install prometheus"
            ) from None
