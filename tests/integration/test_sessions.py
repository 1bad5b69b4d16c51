"""Whole pytest sessions run in a subprocess against the real engine: selection, failures, cleanup.

Each inner session starts (and must remove) its own stack; the outer test counts its containers
by label.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from pytest_aikernel import Settings, Stack

from .conftest import FOUNDATION, containers_of, networks_of, removed

SESSION_FILE = "session.txt"
#: each inner test writes its stack's session id here, so the outer test can count containers
RECORD = f"""
import pathlib

def record(stack):
    pathlib.Path({SESSION_FILE!r}).write_text(stack.session_id)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=300)


def session_of(pytester: pytest.Pytester) -> str:
    return (pytester.path / SESSION_FILE).read_text().strip()


def test_marker_subset_starts_only_those_containers_and_removes_them_after(
    pytester: pytest.Pytester, docker_api: docker.DockerClient
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_subset="""
import pytest, docker
from helper import record

@pytest.mark.aikernel_stack("redis-replica")
def test_subset(aikernel_stack):
    record(aikernel_stack)
    client = docker.from_env()
    found = client.containers.list(filters={"label": "pytest-aikernel.session=" + aikernel_stack.session_id})
    assert sorted(c.labels["pytest-aikernel.service"] for c in found) == ["redis", "redis-replica"]
    assert sorted(aikernel_stack) == ["redis", "redis-replica"]
    assert "postgres" not in aikernel_stack
""",
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "aikernel: services needed by the selected tests: redis, redis-replica",
            "aikernel: redis ready in *",
            "aikernel: redis-replica ready in *",
            "aikernel: stack of 2 services*",
            "test_subset.py .*",  # the start lines come before the progress dots
        ]
    )
    session = session_of(pytester)
    assert removed(docker_api, session) == {}


def test_missing_image_fails_naming_image_and_setting(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(aikernel_redis):\n    pass\n")
    result = run(pytester, "--aikernel-image", "redis=aikernel-standin/nonexistent:1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*redis: image 'aikernel-standin/nonexistent:1' is not present locally and could not be "
            "pulled*--aikernel-image redis=IMAGE*AIKERNEL_IMAGE_REDIS*currently set by "
            "--aikernel-image*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_bad_init_sql_fails_naming_file_database_and_line(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("good.sql").write_text("CREATE TABLE catalog.ok (id int);\n")
    pytester.path.joinpath("bad.sql").write_text(
        "-- comment\nCREATE TABLE audit.t (id int);\n\nINSERT INTO audit.t\n  SELECT nope FROM audit.t;\n"
    )
    pytester.makepyfile("def test_x(aikernel_postgres):\n    pass\n")
    result = run(
        pytester,
        "--aikernel-postgres-init=good.sql",
        "--aikernel-postgres-init=aikernel_audit:bad.sql",
    )
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert re.search(
        r"postgres: init file \S*bad\.sql failed in database 'aikernel_audit': statement at line 5"
        r" \(statement starts at line 4\)",
        out,
    ), out
    assert 'ERROR: column "nope" does not exist (SQLSTATE 42703)' in out
    assert "--aikernel-postgres-init" in out


def test_exited_container_reports_service_exit_code_and_logs(pytester: pytest.Pytester) -> None:
    # the postgres image cannot run redis-server: its container exits at once
    image = os.environ.get("AIKERNEL_IMAGE_POSTGRES", "postgres:15")
    pytester.makepyfile("def test_x(aikernel_redis):\n    pass\n")
    result = run(pytester, "--aikernel-image", f"redis={image}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"redis: container ({image}) exited with code * before it was ready after * s. "
            "Check the image*",
            "Last 50 log lines of redis (*):",
            "  | *",
        ]
    )


def test_probe_timeout_names_timeout_setting_elapsed_and_logs(pytester: pytest.Pytester) -> None:
    # the redis image runs but never answers Vault's health endpoint on 8200
    image = os.environ.get("AIKERNEL_IMAGE_REDIS", "redis:7")
    pytester.makepyfile("def test_x(aikernel_vault):\n    pass\n")
    started = time.monotonic()
    result = run(pytester, "--aikernel-image", f"vault={image}", "--aikernel-startup-timeout=2")
    assert time.monotonic() - started < 60
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"vault ({image}) was not ready after 2.* s (startup timeout 2 s, from "
            "--aikernel-startup-timeout); last probe error: *",
            "Raise it with --aikernel-startup-timeout SECONDS (ini aikernel_startup_timeout, env "
            "AIKERNEL_STARTUP_TIMEOUT)*",
            "Last 50 log lines of vault (*):",
            "*Ready to accept connections*",
        ]
    )


def test_secrets_never_printed_in_full(pytester: pytest.Pytester) -> None:
    # a failing test shows its locals (the service objects); the secrets stay masked
    pytester.makepyfile(
        test_fail="""
import pathlib

def test_fail(aikernel_postgres, aikernel_redis, aikernel_vault):
    pg, rd, vt = aikernel_postgres, aikernel_redis, aikernel_vault
    pathlib.Path("secrets.txt").write_text("\\n".join([pg.password, rd.password, vt.token]))
    assert (pg, rd, vt) is None
"""
    )
    result = run(pytester, "-l", "-vv")
    result.assert_outcomes(failed=1)
    out = result.stdout.str() + result.stderr.str()
    secrets = (pytester.path / "secrets.txt").read_text().split()
    assert len(secrets) == 3 and all(len(s) >= 32 for s in secrets)
    assert "PostgresService(host='127.0.0.1'" in out
    for secret in secrets:
        assert secret not in out
        assert secret[:2] + "***" in out


def test_seed_failure_reports_vault_and_masks_its_log(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("seed.yaml").write_text("approles: {r: {token_ttl: not-a-duration}}\n")
    pytester.makepyfile("def test_x(aikernel_vault):\n    pass\n")
    result = run(pytester, "--aikernel-vault-seed=seed.yaml")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "vault: seed file" in out and "approles 'r' failed" in out
    assert "not-a-duration" in out
    for token in re.findall(r"Root Token: (\S+)", out):
        assert token.endswith("***") and len(token) <= 5, token


def test_leftovers_of_a_killed_session_are_swept_by_the_next_one(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, aikernel_settings: Settings
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_hang="""
import time
from helper import record

import pytest

@pytest.mark.aikernel_stack("redis")
def test_hang(aikernel_stack, aikernel_redis):
    record(aikernel_stack)
    time.sleep(300)
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_hang.py"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = Path(pytester.path, SESSION_FILE)
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), "the inner session never reached its test"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dead = path.read_text().strip()
    assert containers_of(docker_api, dead), "SIGKILL leaves the containers behind"

    live = Stack(aikernel_settings)
    try:
        live.start(["redis"])
        assert containers_of(docker_api, dead) == {}
        assert networks_of(docker_api, dead) == []
        assert containers_of(docker_api, live.session_id) == {"redis": "running"}
    finally:
        live.stop()  # a stack stopped while its process goes on: removed before stop() returns
    assert containers_of(docker_api, live.session_id) == {}


@FOUNDATION
def test_sweeper_leaves_live_sessions_alone(
    docker_api: docker.DockerClient, aikernel_stack: Stack, aikernel_settings: Settings
) -> None:
    before = containers_of(docker_api, aikernel_stack.session_id)
    other = Stack(aikernel_settings)
    try:
        other.start(["redis"])
    finally:
        other.stop()
    assert containers_of(docker_api, aikernel_stack.session_id) == before


def aikernel(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the aikernel command (as ``python -m pytest_aikernel``) and check it succeeded."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def reused_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """`aikernel up redis` in a private cache folder; the reused stack's session id."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    match = re.search(r"session (\w+)\)", aikernel("up", "redis").stderr)
    assert match is not None
    return match.group(1)


def _owned_by(client: docker.DockerClient, pid: int) -> list:
    return [
        c
        # Ryuk may be removing a killed run's containers while they are listed
        for c in client.containers.list(
            all=True, ignore_removed=True, filters={"label": "pytest-aikernel.owner"}
        )
        if c.labels["pytest-aikernel.owner"].split(":")[-2] == str(pid)
    ]


@FOUNDATION
def test_kill_during_startup_then_down_spares_reused_and_live_stacks(
    pytester: pytest.Pytester,
    docker_api: docker.DockerClient,
    aikernel_stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    reused = reused_redis(monkeypatch, tmp_path)
    assert set(containers_of(docker_api, reused)) == {"redis"}
    live_before = containers_of(docker_api, aikernel_stack.session_id)

    pytester.makepyfile(
        test_slow="""
import pytest

@pytest.mark.aikernel_stack("postgres", "postgres-replica", "redis", "vault")
def test_slow(aikernel_stack):
    pass
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_slow.py"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _owned_by(docker_api, proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the start-up
        proc.wait()
    left = _owned_by(docker_api, proc.pid)
    assert left, "the killed start-up left containers behind"

    aikernel("down")
    assert _owned_by(docker_api, proc.pid) == []
    # `down` removes reused stacks too; the live session's stack is untouched
    assert containers_of(docker_api, reused) == {}
    assert containers_of(docker_api, aikernel_stack.session_id) == live_before


@FOUNDATION
def test_sweep_at_startup_spares_a_reused_stack(
    docker_api: docker.DockerClient,
    aikernel_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    reused = reused_redis(monkeypatch, tmp_path)
    try:
        fresh = Stack(aikernel_settings)  # its first start sweeps dead sessions' leftovers
        try:
            fresh.start(["redis"])
        finally:
            fresh.stop()
        assert set(containers_of(docker_api, reused)) == {"redis"}
    finally:
        aikernel("down")


def test_bad_cypher_file_is_named(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("bad.cypher").write_text(
        "CREATE (:Ok {n: 1});\n// next one is wrong\nMATCH (n) RETURN m;\n"
    )
    pytester.makepyfile("def test_x(aikernel_neo4j):\n    pass\n")
    result = run(pytester, "--aikernel-neo4j-init=bad.cypher")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert re.search(r"neo4j: init file \S*bad\.cypher failed at the statement on line 3:", out), (
        out
    )
    assert "MATCH (n) RETURN m" in out
    assert "Variable `m` not defined" in out


def test_bad_elasticsearch_init_file_is_named_with_the_server_reason(
    pytester: pytest.Pytester,
) -> None:
    pytester.path.joinpath("bad.json").write_text('{"indices": {"Upper-Case-Not-Allowed": {}}}')
    pytester.makepyfile("def test_x(aikernel_elasticsearch):\n    pass\n")
    result = run(pytester, "--aikernel-elasticsearch-init=bad.json")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert re.search(
        r"elasticsearch: init file \S*bad\.json: indices 'Upper-Case-Not-Allowed' failed: HTTP 400:"
        r" invalid_index_name_exception",
        out,
    ), out


def test_conftest_hooks_change_a_container_and_seed_further(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import dataclasses

def pytest_aikernel_container(service, spec):
    if service == "redis":
        return dataclasses.replace(spec, command=(*spec.command, "--maxmemory", "7mb"))
    return None

def pytest_aikernel_ready(service, obj, stack):
    if service == "postgres":
        with obj.connect() as conn:
            conn.execute("CREATE TABLE catalog.from_hook (v int)")
            conn.execute("INSERT INTO catalog.from_hook VALUES (7)")
            conn.commit()
"""
    )
    pytester.makepyfile(
        """
def test_hooks(aikernel_redis, aikernel_postgres, aikernel_pg):
    assert aikernel_redis.client().config_get("maxmemory") == {"maxmemory": str(7 * 1024 * 1024)}
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT v FROM catalog.from_hook").fetchall() == [(7,)]
    # the hook ran before the per-test templates were frozen: clones have its data too
    assert aikernel_pg.execute("SELECT v FROM catalog.from_hook").fetchall() == [(7,)]
"""
    )
    run(pytester).assert_outcomes(passed=1)


def test_aikernel_up_and_pytest_reuse_share_one_stack(
    pytester: pytest.Pytester,
    docker_api: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pytester.makeini("[pytest]\naikernel_startup_timeout = 60\n")
    pytester.makepyfile(
        helper=RECORD,
        test_reused="""
import pytest
from helper import record

@pytest.mark.aikernel_stack("redis")
def test_reused(aikernel_stack):
    record(aikernel_stack)
""",
    )
    up = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", "up", "redis"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    try:
        result = run(pytester, "--aikernel-reuse", "-s")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["aikernel: reusing redis*"])
        assert f"session {session_of(pytester)})" in up.stderr
    finally:
        aikernel("down")
