"""A remote engine: a second dockerd in a network namespace made by ``tests/remote/engine``,
reached at ``tcp://10.213.77.2:2375``. The foundation tests, the per-test fixtures, xdist and a
fault run against it with ``DOCKER_HOST``, and the local engine gets no container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .test_in_container import SELECTION

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "tests" / "remote" / "engine"
LABEL = "pytest-aikernel.session"


def _missing() -> str:
    if os.geteuid() != 0:
        return "root (it makes a network namespace and a second dockerd)"
    for tool in ("nft", "nsenter", "unshare", "ip", "dockerd"):
        if shutil.which(tool) is None:
            return f"the {tool} command"
    if not os.environ.get("AIKERNEL_IMAGE_POSTGRES"):
        return "the stand-in images (AIKERNEL_IMAGE_* from tests/images/build)"
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=f"a remote engine here needs {_missing()}")

IMAGES = ("POSTGRES", "REDIS", "VAULT")


@pytest.fixture(scope="module")
def remote() -> Iterator[dict[str, str]]:
    """The environment of inner runs on the remote engine (its images copied in)."""
    images = [os.environ[f"AIKERNEL_IMAGE_{name}"] for name in IMAGES]
    if os.environ.get("RYUK_CONTAINER_IMAGE"):
        images.append(os.environ["RYUK_CONTAINER_IMAGE"])
    began = time.monotonic()
    up = subprocess.run(
        [str(ENGINE), "up", *images], capture_output=True, text=True, timeout=900, check=False
    )
    assert up.returncode == 0, up.stderr[-3000:]
    match = re.fullmatch(r"export DOCKER_HOST=(\S+)\n?", up.stdout)
    assert match is not None, up.stdout
    print(f"remote engine up in {time.monotonic() - began:.1f} s")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
    }
    env["DOCKER_HOST"] = match.group(1)
    env["TESTCONTAINERS_CONNECTION_MODE"] = "docker_host"
    try:
        yield env
    finally:
        subprocess.run([str(ENGINE), "down"], capture_output=True, timeout=300, check=False)


def _local() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///var/run/docker.sock")


def _local_session(session: str) -> list[str]:
    """Containers and networks of ``session`` on the local engine (other processes may run
    stacks of their own there meanwhile: only this session's count)."""
    client = _local()
    try:
        flt = {"label": f"{LABEL}={session}"}
        return [c.name for c in client.containers.list(all=True, filters=flt)] + [
            n.name for n in client.networks.list(filters=flt)
        ]
    finally:
        client.close()


def _remote_session(env: dict[str, str], session: str) -> list[str]:
    client = docker.DockerClient(base_url=env["DOCKER_HOST"])
    try:
        return [
            c.name
            for c in client.containers.list(
                all=True, ignore_removed=True, filters={"label": f"{LABEL}={session}"}
            )
        ]
    finally:
        client.close()


def _pytest(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_foundation_tests_pass_on_a_remote_engine(remote: dict[str, str]) -> None:
    done = _pytest(remote, *SELECTION)
    text = done.stdout + done.stderr
    ignored = [line for line in text.splitlines() if "Exception ignored" in line]
    assert done.returncode == 0, "\n".join(ignored) + "\n" + text[-6000:]
    host = remote["DOCKER_HOST"].split("//")[1].split(":")[0]
    assert (
        f"aikernel: engine {remote['DOCKER_HOST']} (DOCKER_HOST); services at {host} "
        f"(DOCKER_HOST), ports bound to {host}"
    ) in text
    assert f"WARNING: the stack's ports are published on {host}" in text
    assert "Ryuk reaper on" in text, text[:3000]
    assert re.search(r"\b(\d+) passed\b", text) and " failed" not in text, text[-3000:]
    session = re.search(r"session (\w+), ready in", text)
    assert session is not None, text[:3000]
    assert _local_session(session.group(1)) == [], "the local engine got containers"
    deadline = time.monotonic() + 30
    while _remote_session(remote, session.group(1)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _remote_session(remote, session.group(1)) == []


SUITE = """
import os

def test_clone(aikernel_pg, aikernel_redis_db):
    aikernel_pg.execute("CREATE TABLE t (x int)")
    aikernel_pg.execute("INSERT INTO t VALUES (1)")
    aikernel_redis_db.set("k", "v")
    assert aikernel_redis_db.dbsize() == 1
    assert aikernel_pg.execute("SELECT count(*) FROM t").fetchone() == (1,)

def test_other_clone(aikernel_pg, aikernel_redis_db):
    assert aikernel_pg.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() == (0,)
    assert aikernel_redis_db.dbsize() == 0

def test_kill_and_start(aikernel_postgres):
    port = aikernel_postgres.port
    with aikernel_postgres.connect("postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    aikernel_postgres.kill()
    aikernel_postgres.start()
    assert aikernel_postgres.port == port
    with aikernel_postgres.connect("postgres") as conn:
        assert (7,) in conn.execute("SELECT x FROM kept").fetchall()
"""


def test_xdist_per_test_fixtures_and_a_fault_on_a_remote_engine(
    remote: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "test_remote_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = _pytest(remote, "-p", "no:cacheprovider", "-n", "2", cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    assert "3 passed" in text, text[-3000:]
    session = re.search(r"session (\w+)", text)
    assert session is not None, text[-3000:]
    assert _local_session(session.group(1)) == [], "the local engine got containers"
