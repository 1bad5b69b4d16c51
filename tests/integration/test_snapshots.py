"""Seeded snapshots of PostgreSQL: after the first seeded start a separate process makes one
(and leaves nothing else behind), the next cold start of the same key begins from it with exactly
the seeded data, a changed init file gives a new one, ``off`` never makes or uses one, a broken one
falls back to seeding, a failed build is shown and tried again, and they can be removed, exported
(once their build ended) and imported.

Each test seeds with an init file of its own (a random token in it), so its snapshot key is its own.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_aikernel.runtime.docker import (
    LABEL_SESSION,
    LABEL_SNAPSHOT_KEY,
    SNAPSHOT_REPO,
    SNAPSHOT_ROOT,
)
from pytest_aikernel.runtime.snapbuild import failure_path, lock_path, wait_for_builds

from .test_lifecycle import RECORD, out

SUITE = (
    RECORD
    + """
import json

def test_seeded_data(aikernel_postgres, aikernel_pg):
    with aikernel_postgres.connect() as conn:
        shape = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        rows = conn.execute("SELECT mark FROM snap.marks ORDER BY mark").fetchall()
        # a test's write, after the snapshot was taken: never in a snapshot
        conn.execute("INSERT INTO snap.marks VALUES ('written by a test')")
        conn.commit()
    clone_rows = aikernel_pg.execute("SELECT count(*) FROM snap.marks").fetchone()[0]
    record("data", json.dumps({"shape": shape, "rows": rows, "clone_rows": clone_rows}))
"""
)


def _init(folder: Path, token: str, marks: tuple[str, ...]) -> Path:
    sql = folder / "snap.sql"
    values = ", ".join(f"('{m}')" for m in marks)
    sql.write_text(
        f"-- token {token}\nCREATE SCHEMA snap;\nCREATE TABLE snap.marks (mark text);\n"
        f"INSERT INTO snap.marks VALUES {values};\n"
    )
    return sql


@pytest.fixture
def project(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[pytest.Pytester, str]]:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setenv("AIKTEST_OUT", str(out_dir))
    token = secrets.token_hex(6)
    _init(pytester.path, token, ("seed-1", "seed-2"))
    pytester.makepyfile(test_snap=SUITE)
    pytester.makeini("[pytest]\naikernel_postgres_init = aikernel_catalog:snap.sql\n")
    yield pytester, token
    wait_for_builds(120)  # a build still running would make its image after the removal
    client = docker.from_env()
    try:
        for key in _KEYS:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(f"{SNAPSHOT_REPO}/postgres:{key}", force=True)
            with contextlib.suppress(OSError):
                failure_path("postgres", key).unlink()
    finally:
        _KEYS.clear()
        client.close()


#: snapshot keys the tests made (removed after each test)
_KEYS: list[str] = []


def _run(pytester: pytest.Pytester, *args: str) -> tuple[str, dict]:
    import json

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args, timeout=600)
    text = result.stdout.str()
    assert result.ret == 0, text
    return text, json.loads(out("data"))


def _kept(text: str) -> str:
    match = re.search(r"snapshot (\w+) is made by a separate process after this session", text)
    assert match is not None, text
    _KEYS.append(match.group(1))
    return match.group(1)


def _wait_image(key: str, timeout: float = 120) -> str:
    tag = f"{SNAPSHOT_REPO}/postgres:{key}"
    client = docker.from_env()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                image = client.images.get(tag)
                assert image.labels[LABEL_SNAPSHOT_KEY] == key
                return tag
            except docker.errors.ImageNotFound:
                assert time.monotonic() < deadline, f"{tag} was never built"
                time.sleep(0.2)
    finally:
        client.close()


def _sessions(client: docker.DockerClient) -> set[str]:
    return {
        c.labels[LABEL_SESSION]
        for c in client.containers.list(all=True, filters={"label": LABEL_SESSION})
    }


def test_the_snapshot_is_made_after_the_session_by_a_process_that_leaves_nothing(project) -> None:
    """The first run does not wait for a copy: its snapshot is made after it by a separate
    process, whose own stack is removed when the image is there."""
    pytester, _token = project
    client = docker.from_env()
    before = _sessions(client)
    text, _data = _run(pytester)
    key = _kept(text)
    session = re.search(r"session (\w+), ready in", text)
    assert session is not None, text
    tag = f"{SNAPSHOT_REPO}/postgres:{key}"
    # a build takes seconds (its own stack is seeded first): not there when pytest returned
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)
    assert _wait_image(key) == tag
    assert wait_for_builds(60) == []
    deadline = time.monotonic() + 30
    while True:
        left = _sessions(client) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    client.close()
    assert left == set(), f"left by the run ({session.group(1)}) or its snapshot's builder"
    assert not failure_path("postgres", key).exists()
    assert not lock_path("postgres", key).exists(), "the build's lock file was left behind"


BREAK_ENGINE = """
import os

def test_later(aikernel_postgres):
    # what the session's end starts inherits this environment: it reaches no engine
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/aikernel-test.sock"
"""


def test_a_failed_build_is_shown_by_the_next_cold_start_and_tried_again(
    project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester, _token = project
    monkeypatch.setenv("RYUK_RECONNECTION_TIMEOUT", "5s")  # Ryuk removes the first stack
    pytester.makepyfile(test_break=BREAK_ENGINE)
    key = _kept(_run(pytester, "test_snap.py", "test_break.py")[0])
    deadline = time.monotonic() + 60
    while not failure_path("postgres", key).exists():
        assert time.monotonic() < deadline, "the failed build left no reason"
        time.sleep(0.2)
    assert wait_for_builds(60) == []
    listed = _aikernel(tmp_path / "xdg", "snapshots", "list").stdout
    assert f"postgres\tkey {key}\tfailed: " in listed, listed
    text, data = _run(pytester, "test_snap.py")
    assert _kept(text) == key
    why = re.search(r"\(the last attempt failed: (.+)\)", text)
    assert why is not None, text
    assert "nonexistent" in why.group(1) or "Docker" in why.group(1), why.group(1)
    assert data["rows"] == [["seed-1"], ["seed-2"]]
    _wait_image(key)  # the second build worked
    assert wait_for_builds(60) == []
    assert not failure_path("postgres", key).exists()
    text, _data = _run(pytester, "test_snap.py")
    assert f"from snapshot {key}" in text


def test_a_snapshot_start_holds_exactly_the_seeded_data(project) -> None:
    pytester, _token = project
    seeded_text, seeded = _run(pytester)
    key = _kept(seeded_text)
    _wait_image(key)
    text, from_snapshot = _run(pytester)
    assert re.search(rf"postgres ready in [\d.]+ s \(127\.0\.0\.1:\d+; from snapshot {key}\)", text)
    assert "made by a separate process" not in text
    # the same schemas and tables, the same rows; none of what the first run's test wrote
    assert from_snapshot == seeded
    assert from_snapshot["rows"] == [["seed-1"], ["seed-2"]]
    assert from_snapshot["clone_rows"] == 2  # the templates came with it


PASSWORD_SUITE = (
    RECORD
    + """
import os

import docker
import psycopg
import pytest


def test_password(aikernel_postgres):
    client = docker.from_env()
    labels = client.images.get(os.environ["AIKTEST_SNAPSHOT"]).labels
    client.close()
    held = labels["pytest-aikernel.snapshot-secret.postgres.password"]
    record("held", held)
    record("password", aikernel_postgres.password)
    # the server took this stack's password: the one the snapshot was made with is refused
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=aikernel_postgres.host, port=aikernel_postgres.port,
                        user=aikernel_postgres.user, password=held, dbname="postgres")
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT count(*) FROM snap.marks").fetchone()[0] == 2
"""
)


def test_a_snapshot_start_has_a_password_of_its_own(project, monkeypatch) -> None:
    """The snapshot keeps the password of the stack that made it (a label); a start from it logs
    in with that over TCP and sets its own stack's random password."""
    pytester, _token = project
    key = _kept(_run(pytester)[0])
    monkeypatch.setenv("AIKTEST_SNAPSHOT", _wait_image(key))
    pytester.makepyfile(test_password=PASSWORD_SUITE)
    passwords = []
    for _ in range(2):  # two stacks from one snapshot
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "test_password.py", timeout=600
        )
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines([f"*postgres ready in * from snapshot {key})*"])
        passwords.append(out("password"))
    held = out("held")
    assert len(set(passwords)) == 2
    assert held not in passwords


def test_a_replica_follows_a_primary_started_from_a_snapshot(project) -> None:
    pytester, _token = project
    key = _kept(_run(pytester)[0])
    _wait_image(key)
    pytester.makepyfile(
        test_replica="""
def test_replica(aikernel_postgres, aikernel_postgres_replica):
    with aikernel_postgres.connect() as conn:
        conn.execute("INSERT INTO snap.marks VALUES ('replicated')")
        conn.commit()
    aikernel_postgres_replica.wait_for_replication(timeout=20)
    with aikernel_postgres_replica.connect() as conn:
        assert conn.execute("SELECT count(*) FROM snap.marks").fetchone()[0] == 3
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_replica.py", timeout=600)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"*postgres ready in * from snapshot {key})*"])


def test_a_changed_init_file_gives_a_new_snapshot_and_the_new_data(project) -> None:
    pytester, token = project
    first = _kept(_run(pytester)[0])
    _wait_image(first)
    _init(pytester.path, token, ("seed-1", "seed-2", "seed-3"))
    text, data = _run(pytester)
    second = _kept(text)
    assert second != first
    assert "from snapshot" not in text
    assert data["rows"] == [["seed-1"], ["seed-2"], ["seed-3"]]
    _wait_image(second)
    text, data = _run(pytester)
    assert f"from snapshot {second}" in text
    assert data["rows"] == [["seed-1"], ["seed-2"], ["seed-3"]]


def test_off_never_makes_or_uses_one(project) -> None:
    pytester, _token = project
    client = docker.from_env()
    before = {i.id for i in client.images.list(filters={"label": "pytest-aikernel.snapshot"})}
    text, _data = _run(pytester, "--aikernel-snapshots", "off")
    assert "snapshot" not in text
    time.sleep(3)  # a background build would have started by now
    after = {i.id for i in client.images.list(filters={"label": "pytest-aikernel.snapshot"})}
    assert after == before
    key = _kept(_run(pytester)[0])  # on: made
    _wait_image(key)
    text, _data = _run(pytester, "--aikernel-snapshots=off")
    assert "from snapshot" not in text
    client.close()


def test_a_broken_snapshot_falls_back_to_seeding(project) -> None:
    pytester, _token = project
    key = _kept(_run(pytester)[0])
    tag = _wait_image(key)
    # overwrite the control file of the snapshot's cluster: the server cannot start from it
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        control = f"{SNAPSHOT_ROOT}/var/lib/postgresql/data/global/pg_control"
        dockerfile = f"FROM {tag}\nCOPY garbage {control}\n"
        for name, data in (("Dockerfile", dockerfile.encode()), ("garbage", b"\0" * 8192)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client = docker.from_env()
    client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True)
    client.close()
    text, data = _run(pytester)
    assert f"snapshot {key} did not start" in text, text
    assert "seeding instead" in text
    assert data["rows"] == [["seed-1"], ["seed-2"]]


def _aikernel(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The aikernel command with a private cache folder (no reused stack of the user's)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )
    assert done.returncode == 0, done.stderr
    return done


def test_export_import_round_trip_and_down_removes_them(project, tmp_path: Path) -> None:
    pytester, _token = project
    key = _kept(_run(pytester)[0])
    tag = f"{SNAPSHOT_REPO}/postgres:{key}"
    folder = tmp_path / "cache"
    xdg = tmp_path / "xdg"
    # right after the run, its snapshot is still being made: export waits for that
    _aikernel(xdg, "snapshots", "export", str(folder))
    exported = list(folder.glob("*.tar"))
    assert any(key in p.name for p in exported)
    _aikernel(xdg, "down", "--snapshots")
    client = docker.from_env()
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)
    _aikernel(xdg, "snapshots", "import", str(folder))
    assert client.images.get(tag).labels[LABEL_SNAPSHOT_KEY] == key
    client.close()
    text, data = _run(pytester)
    assert f"from snapshot {key}" in text
    assert data["rows"] == [["seed-1"], ["seed-2"]]


def test_a_restart_after_a_fault_keeps_the_data_of_a_snapshot_start(project) -> None:
    """The snapshot copy runs only into an empty data directory: a container started again after
    kill() keeps what was committed since (not the snapshot's files)."""
    pytester, _token = project
    key = _kept(_run(pytester)[0])
    _wait_image(key)
    pytester.makepyfile(
        test_fault="""
def test_kill(aikernel_postgres):
    with aikernel_postgres.connect() as conn:
        conn.execute("INSERT INTO snap.marks VALUES ('committed before the kill')")
        conn.commit()
    aikernel_postgres.kill()
    aikernel_postgres.start()
    with aikernel_postgres.connect() as conn:
        rows = [r[0] for r in conn.execute("SELECT mark FROM snap.marks ORDER BY mark")]
    assert rows == ["committed before the kill", "seed-1", "seed-2"], rows
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_fault.py", timeout=600)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"*postgres ready in * from snapshot {key})*"])
