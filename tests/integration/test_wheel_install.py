"""The wheel is the whole product: built from the checkout, installed into a fresh virtual
environment outside the repository, it starts the embedded broker from the files it carries,
creates and checks the topics, and stops the broker.

The fresh environment gets shelfq from the wheel alone. Its dependencies (torch, Faust, ...) come
from the project's environment through a path file rather than a second download of about 2 GB:
a path file adds the folder to ``sys.path`` after the environment's own site-packages and runs
none of that folder's ``.pth`` files, so the project's editable install stays out of it."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shelfq.ops.ports import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, status: int = 0) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == status, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the environment's setuptools builds it, nothing is downloaded.
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        cwd=out)
    (built,) = out.glob("shelfq-*.whl")
    return built


def test_the_wheel_holds_one_package_and_its_files(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"shelfq"}
    for part in ("contracts", "streams", "learner", "agents", "frontend", "simulator", "evaluation"):
        assert f"shelfq/{part}/__init__.py" in names, part
    for shipped in ("deploy/kafka/pom.xml", "deploy/kafka/server.properties", "deploy/kafka/log4j2.properties",
                    "deploy/prometheus/alerts.yml", "deploy/grafana/shelfq-dashboard.json"):
        assert f"shelfq/{shipped}" in names, shipped
    assert not any(n.startswith("shelfq/tests") or "/__pycache__/" in n for n in names)


def test_installed_outside_the_repository_it_runs_the_broker(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    fresh_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).strip())
    (fresh_site / "shelfq-test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHELFQ_", "PYTHON"))}
    env.update(SHELFQ_HOME=str(tmp_path / "home"), SHELFQ_BROKER_PORT=str(free_port()),
               SHELFQ_CONTROLLER_PORT=str(free_port()))
    shelfq = str(venv / "bin" / "shelfq")
    where = run([str(python), "-c", "import shelfq.ops.resources as r, shelfq.streams; "
                 "print(r.deploy_dir()); print(shelfq.streams.__file__)"], tmp_path, env)
    assert all(line.startswith(str(fresh_site)) for line in where.split()), where
    assert "usage: shelfq" in run([shelfq, "--help"], tmp_path, env)
    run([shelfq, "broker", "start"], tmp_path, env)
    try:
        run([shelfq, "topics", "create"], tmp_path, env)
        run([shelfq, "topics", "create", "--check"], tmp_path, env)
    finally:
        run([shelfq, "broker", "stop"], tmp_path, env)
    assert "not running" in run([shelfq, "broker", "status"], tmp_path, env, status=3)
