"""The bookkeeping of detached snapshot builds: their locks and failure notes (no engine)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pytest_aikernel.runtime import snapbuild


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _hold(service: str, key: str) -> int:
    fd = snapbuild._take(snapbuild.lock_path(service, key))
    assert fd is not None
    return fd


def test_a_held_lock_is_a_running_build_and_a_second_cannot_take_it() -> None:
    fd = _hold("postgres-replica", "0123456789abcdef")
    try:
        assert snapbuild._take(snapbuild.lock_path("postgres-replica", "0123456789abcdef")) is None
        assert snapbuild.lock_held("postgres-replica", "0123456789abcdef")
        assert snapbuild.build_states() == [("postgres-replica", "0123456789abcdef", "running")]
    finally:
        os.close(fd)
    assert not snapbuild.lock_held("postgres-replica", "0123456789abcdef")
    assert snapbuild.build_states() == []


def test_a_failure_is_listed_until_a_build_of_the_key_runs(private_tmp: Path) -> None:
    snapbuild.failure_path("postgres", "aaaa").write_text("DockerUnavailable: no engine\n")
    (private_tmp / "aikernel-snapshot-job-x1y2").mkdir()  # a job folder is not a build
    assert snapbuild.last_failure("postgres", "aaaa") == "DockerUnavailable: no engine"
    assert snapbuild.build_states() == [
        ("postgres", "aaaa", "failed: DockerUnavailable: no engine")
    ]
    fd = _hold("postgres", "aaaa")
    try:
        assert snapbuild.build_states() == [("postgres", "aaaa", "running")]
    finally:
        os.close(fd)
    assert snapbuild.last_failure("postgres", "bbbb") == ""


def test_wait_for_builds_waits_for_a_lock_and_gives_up_after_its_timeout() -> None:
    fd = _hold("postgres", "cccc")
    told: list[str] = []
    threading.Timer(0.4, os.close, (fd,)).start()
    began = time.monotonic()
    assert snapbuild.wait_for_builds(10, told.append) == []
    assert time.monotonic() - began >= 0.3
    assert told == ["aikernel-snapshot-postgres-cccc.lock"]
    fd = _hold("postgres", "dddd")
    try:
        assert snapbuild.wait_for_builds(0.3) == ["aikernel-snapshot-postgres-dddd.lock"]
    finally:
        os.close(fd)


def test_a_build_that_cannot_start_leaves_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_aikernel.runtime import docker as docker_runtime
    from pytest_aikernel.settings import Settings

    monkeypatch.setattr(docker_runtime, "spawn_detached", lambda *_a, **_k: False)
    assert snapbuild.spawn_build(Settings(), "postgres", "eeee") is False
    assert "no process could be started" in snapbuild.last_failure("postgres", "eeee")
    assert not snapbuild.lock_held("postgres", "eeee")
    assert not list(Path(tempfile.gettempdir()).glob("aikernel-snapshot-job-*"))


def test_a_build_already_running_is_not_started_twice() -> None:
    from pytest_aikernel.settings import Settings

    fd = _hold("postgres", "ffff")
    try:
        assert snapbuild.spawn_build(Settings(), "postgres", "ffff") is False
        assert snapbuild.last_failure("postgres", "ffff") == ""
    finally:
        os.close(fd)


def test_looking_at_a_build_never_makes_its_lock_file() -> None:
    """An observer (export's wait, the list, a session's note) must not leave a lock file behind
    once the build that held it removed it."""
    path = snapbuild.lock_path("postgres", "1111")
    assert not snapbuild.lock_held("postgres", "1111")
    assert snapbuild.build_states() == []
    assert snapbuild.wait_for_builds(1) == []
    assert not path.exists()
    fd = _hold("postgres", "1111")
    path.unlink()  # the build removes its file while it still holds it, then ends
    os.close(fd)
    assert not snapbuild.lock_held("postgres", "1111")
    assert not path.exists()
