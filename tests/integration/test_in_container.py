"""pytest in a container: the foundation tests run inside a container of the local engine.

The image of ``tests/incontainer/`` (this project and its test dependencies on bookworm's
python3) runs the foundation's tests with the engine's socket mounted and no host networking, as
a CI job in a container would. The plugin must find its own container, put it on the stack network
and reach every service by its alias ("attached" mode), keep Ryuk on, and leave nothing behind:
no container, network or volume of the inner session, and its own container back on the networks
it started with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import pytest

from pytest_aikernel.runtime.docker import LABEL_SESSION, remove_by_labels

from .conftest import containers_of, image_present, networks_of

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "incontainer" / "build"
BASE_IMAGE = "aikernel-standin/base:bookworm"
SOCKET = "/var/run/docker.sock"

#: the foundation (postgres, postgres-replica, redis, redis-replica, vault): its session-scoped
#: services through their clients, and the per-test objects (clones, Redis dbs, Vault paths)
SELECTION = [
    "tests/integration/test_services.py",
    "tests/integration/test_isolation.py",
    *(
        f"tests/integration/test_per_test_objects.py::{name}"
        for name in (
            "test_the_objects_keep_their_client_types",
            "test_pg_dsn_reaches_the_clone",
            "test_pg_audit_dsn_reaches_the_audit_clone",
            "test_pg_factory_addresses",
            "test_pg_factory_loads_sql_files",
            "test_pg_factory_names_the_bad_line_of_a_load_file",
            "test_redis_url_reaches_the_same_database",
            "test_vault_url_and_token_reach_the_prefix",
        )
    ),
    "-p",
    "no:cacheprovider",
]

#: run in the container (``python -c PROBE ARGS...``): pytest in this process, then what the
#: session left of this container's network attachments and which Ryuk it talked to
PROBE = r"""
import json, socket, sys
import docker, pytest

class Probe:
    def pytest_sessionfinish(self, session):
        from testcontainers.core.container import Reaper
        ryuk = getattr(Reaper, "_container", None)
        if ryuk is None:
            print("\nINCONTAINER-RYUK none", flush=True)
            return
        mode = ryuk.get_docker_client().get_connection_mode().value
        host, port = ryuk.get_container_host_ip(), ryuk.get_exposed_port(8080)
        ident = ryuk.get_wrapped_container().id
        print(f"\nINCONTAINER-RYUK {ident} {host}:{port} {mode}", flush=True)

code = pytest.main(sys.argv[1:], plugins=[Probe()])
client = docker.from_env()
me = client.containers.get(socket.gethostname())
print("INCONTAINER-NETWORKS " + json.dumps(sorted(me.attrs["NetworkSettings"]["Networks"])), flush=True)
client.close()
sys.exit(int(code))
"""


def _docker_missing() -> str:
    """Why the engine cannot be used ("" when it can)."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    if not os.path.exists(SOCKET):
        return f"no Docker socket at {SOCKET} (the container mounts it)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return f"docker info failed: {info.stderr.strip()[:200]}"
    return ""


@pytest.fixture(scope="session")
def incontainer_image() -> str:
    """The image of tests/incontainer, built (or found under its content hash) by its script."""
    why = _docker_missing()
    if why:
        pytest.skip(why)
    if not image_present(BASE_IMAGE):
        pytest.skip(f"image {BASE_IMAGE} is not in the local engine (tests/images/build)")
    started = time.monotonic()
    built = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        pytest.fail(f"{BUILD} failed ({built.returncode}):\n{built.stderr[-4000:]}")
    match = re.fullmatch(r"export AIKERNEL_INCONTAINER_IMAGE=(\S+)\n", built.stdout)
    assert match, f"unexpected output of {BUILD}: {built.stdout!r}"
    print(f"{match.group(1)} in {time.monotonic() - started:.1f} s")
    return match.group(1)


def _expected_count() -> int:
    """How many tests the selection holds, collected here on the host."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *SELECTION],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]
    match = re.search(r"^(\d+)(?:/\d+)? tests? collected", collected.stdout, re.MULTILINE)
    assert match, collected.stdout[-2000:]
    return int(match.group(1))


def _outcomes(output: str) -> dict[str, int]:
    """The final summary line's counts: {"passed": 23, "deselected": 2, ...}."""
    summary = [line for line in output.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    assert summary, output[-3000:]
    return {
        word.rstrip("s") if word in ("errors", "warnings") else word: int(count)
        for count, word in re.findall(r"(\d+) (\w+)", summary[-1])
    }


def _docker_run(
    image: str, name: str, command: list[str], options: tuple[str, ...] = ()
) -> list[str]:
    """``docker run --rm`` of ``image`` as the tests' container: the engine's socket, no
    ``--network host`` (it is on the default bridge), the project's tests/ and pyproject.toml
    (its ini: init files under tests/integration/data) read-only at /work, and the stand-in image
    variables (not TESTCONTAINERS_*: the host's connection mode is not the container's)."""
    passed_env = sorted(
        var
        for var in os.environ
        if var.startswith("AIKERNEL_IMAGE_") or var == "RYUK_CONTAINER_IMAGE"
    )
    return [
        "docker",
        "run",
        "--rm",
        "--name",
        name,
        "-v",
        f"{SOCKET}:{SOCKET}",
        "-v",
        f"{ROOT / 'tests'}:/work/tests:ro",
        "-v",
        f"{ROOT / 'pyproject.toml'}:/work/pyproject.toml:ro",
        *(arg for var in passed_env for arg in ("-e", var)),
        *options,
        image,
        *command,
    ]


def _session_of(output: str) -> str:
    session = re.search(r"aikernel: stack of \d+ services? \(.*\), session ([0-9a-f]+),", output)
    assert session, f"the inner run reported no stack:\n{output[-3000:]}"
    return session.group(1)


def _leftovers(client: docker.DockerClient, session: str) -> dict[str, object]:
    """What is left on the engine of the inner ``session`` (empty when nothing)."""
    left: dict[str, object] = {
        "containers": containers_of(client, session),
        "networks": networks_of(client, session),
        "volumes": [
            v.name for v in client.volumes.list(filters={"label": f"{LABEL_SESSION}={session}"})
        ],
    }
    return {kind: found for kind, found in left.items() if found}


def test_foundation_tests_pass_in_a_container(
    incontainer_image: str, docker_api: docker.DockerClient
) -> None:
    expected = _expected_count()
    assert expected >= 20, "the selection lost its tests"
    name = f"aikernel-incontainer-{uuid.uuid4().hex[:12]}"
    command = _docker_run(incontainer_image, name, ["python", "-c", PROBE, *SELECTION])
    started = time.monotonic()
    session = ""
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        took = time.monotonic() - started
        output = run.stdout + run.stderr
        print(output)
        print(f"in-container run: {took:.1f} s")

        assert run.returncode == 0, output[-6000:]
        assert "services reached on the stack network from this container" in output
        assert "aikernel: Ryuk reaper on (" in output, "the inner run must keep Ryuk on"
        assert "Ryuk reaper unavailable" not in output, "Ryuk did not acknowledge the session"
        outcomes = _outcomes(output)
        assert outcomes.get("passed") == expected, outcomes
        assert not {"failed", "error", "skipped", "xfailed", "xpassed"} & set(outcomes), outcomes

        # nothing of the inner session is left on the engine, nor the test container
        session = _session_of(output)
        assert _leftovers(docker_api, session) == {}
        assert not docker_api.containers.list(all=True, filters={"name": name})
        # the test container left the stack network before it was removed
        networks = re.search(r"^INCONTAINER-NETWORKS (.*)$", output, re.MULTILINE)
        assert networks, output[-3000:]
        assert json.loads(networks.group(1)) == ["bridge"]
        # the inner session's Ryuk was reached; testcontainers removes it at the process's exit
        ryuk = re.search(r"^INCONTAINER-RYUK ([0-9a-f]+) (\S+) (\S+)$", output, re.MULTILINE)
        assert ryuk, output[-3000:]
        deadline = time.monotonic() + 30
        while docker_api.containers.list(all=True, filters={"id": ryuk.group(1)}):
            assert time.monotonic() < deadline, f"the inner session's Ryuk {ryuk.group(1)} stayed"
            time.sleep(0.5)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        if session:
            remove_by_labels(docker_api, {LABEL_SESSION: session})


HOLD = """
import time


def test_hold(aikernel_redis):
    assert aikernel_redis.client().ping()
    print("HOLDING", flush=True)
    time.sleep(600)
"""


def test_a_killed_in_container_run_is_reaped_by_ryuk(
    incontainer_image: str, docker_api: docker.DockerClient, tmp_path: Path
) -> None:
    """The inner process's Ryuk is reachable from the container: when the container is killed
    mid-session (no cleanup of the plugin runs), Ryuk removes the session's stack."""
    (tmp_path / "test_hold.py").write_text(HOLD)
    name = f"aikernel-incontainer-{uuid.uuid4().hex[:12]}"
    command = _docker_run(
        incontainer_image,
        name,
        ["python", "-m", "pytest", "hold/test_hold.py", "-p", "no:cacheprovider", "-s"],
        ("--detach", "-v", f"{tmp_path}:/work/hold:ro"),
    )
    session = ""
    try:
        subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        container = docker_api.containers.get(name)
        deadline = time.monotonic() + 120
        output = ""
        while "HOLDING" not in output:
            assert time.monotonic() < deadline, f"the inner test did not start:\n{output[-3000:]}"
            time.sleep(0.5)
            output = container.logs().decode(errors="replace")
        assert "services reached on the stack network from this container" in output
        assert "Ryuk reaper unavailable" not in output, output[-3000:]
        session = _session_of(output)
        assert containers_of(docker_api, session) == {"redis": "running"}

        container.kill()  # SIGKILL: neither the plugin's cleanup nor testcontainers' runs
        deadline = time.monotonic() + 60  # Ryuk waits 10 s for its client to come back
        while left := _leftovers(docker_api, session):
            assert time.monotonic() < deadline, f"Ryuk left {left} of session {session}"
            time.sleep(0.5)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        if session:
            remove_by_labels(docker_api, {LABEL_SESSION: session})
