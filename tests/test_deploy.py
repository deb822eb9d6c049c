"""What users deploy: the image's steps (without a container engine) and
the Kubernetes manifests, validated in strict mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VALIDATE), "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_manifests_pass_strict_schema_validation():
    assert {p.name for p in MANIFESTS} >= {
        "deployment.yaml",
        "pdb.yaml",
        "service.yaml",
        "configmap.yaml",
        "secret.example.yaml",
    }
    checked = validate(*MANIFESTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    document = yaml.safe_load((ROOT / "deploy/kubernetes/service.yaml").read_text())
    document["spec"]["portz"] = []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    assert validate(bad).returncode != 0


def test_the_deployment_probes_health_and_readiness_and_names_each_pod():
    deployment = yaml.safe_load(
        (ROOT / "deploy/kubernetes/deployment.yaml").read_text()
    )
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {item["name"]: item for item in container["env"]}
    field = env["BATCHWARDEN_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.name"
    # A stop takes at most three 1 s lock releases and a 5 s pool close.
    assert spec["terminationGracePeriodSeconds"] > 8
    assert spec["securityContext"]["runAsNonRoot"] is True


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_until_sigterm(tmp_path):
    """The image's build steps, run here: wheel, new venv, `batchwarden run`
    as the process that gets SIGTERM."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip wheel --no-deps" in dockerfile and "USER 10001" in dockerfile
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "--wheel-dir", str(wheels), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = wheels.glob("batchwarden-*.whl")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True, timeout=900,
    )  # fmt: skip
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith("BATCHWARDEN_")
    }  # fmt: skip
    env["BATCHWARDEN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'image.db'}"
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(venv / "bin" / "batchwarden"), "run", "--port", "0"],
            stderr=stderr, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        url = wait_listening(log, process)
        assert httpx.get(f"{url}/readyz").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()


def wait_listening(log: Path, process: subprocess.Popen) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("batchwarden listening on "):
                return line.split()[-1]
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"not listening:\n{log.read_text()}")
