"""The lease protocol and collection, without a Docker engine."""

from __future__ import annotations

import dataclasses
import fcntl
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aikernel.lease import (
    ExternalLease,
    Leases,
    PlainLease,
    ReuseLease,
    XdistLease,
    XdistShare,
    choose,
    install_id,
    project_id,
)
from pytest_aikernel.settings import Settings

NO_ENGINE = "unix:///nonexistent/docker.sock"


def test_each_way_into_a_stack_is_a_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    share = XdistShare(folder=str(tmp_path / "run"), session_id="abc", owner="h:b:1:2:3")
    base = Settings()
    assert isinstance(choose(base, xdist=None, rootdir=tmp_path), PlainLease)
    assert isinstance(choose(base, xdist=share, rootdir=tmp_path), XdistLease)
    reuse = dataclasses.replace(base, reuse=True)
    assert isinstance(choose(reuse, xdist=None, rootdir=tmp_path), ReuseLease)
    assert isinstance(choose(reuse, xdist=share, rootdir=tmp_path), ReuseLease)
    external = dataclasses.replace(base, mode="external")
    lease = choose(external, xdist=share, rootdir=tmp_path)
    assert isinstance(lease, ExternalLease)
    assert lease.folder == Path(share.folder), "external seeding under xdist takes the run's lock"


def test_project_identity_differs_between_cache_folders_for_the_same_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two CI runners (containers) with the same checkout path and host name share an engine:
    their cache folders differ, so their reused stacks do too."""
    checkout = tmp_path / "builds" / "project"
    checkout.mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "runner-a"))
    a = project_id(checkout)
    assert a == project_id(checkout), "stable within one cache folder"
    assert install_id() == install_id()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "runner-b"))
    assert project_id(checkout) != a


def test_a_lease_is_held_while_its_process_lives(tmp_path: Path) -> None:
    mine = Leases(tmp_path)
    mine.take("postgres")
    # another process holding redis, then dying
    code = (
        "import sys, time; sys.path[:0] = " + repr(sys.path) + "\n"
        "from pathlib import Path\n"
        "from pytest_aikernel.lease import Leases\n"
        f"held = Leases(Path({str(tmp_path)!r}))\n"
        "held.take('redis')\n"
        "print('held', flush=True); time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        checker = Leases(tmp_path)
        assert checker.holders("postgres") and "pid" in checker.holders("postgres")[0]
        assert checker.holders("redis") == [f"pid {other.pid} on {checker.me.split('_')[0]}"]
        other.kill()
        other.wait()
        assert checker.holders("redis") == [], "the kernel dropped the dead holder's lock"
        assert not list((tmp_path / "leases" / "redis").glob("*.lock")), "stale file removed"
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        if other.stdout is not None:
            other.stdout.close()
    mine.release()
    assert Leases(tmp_path).holders("postgres") == []


def test_lease_file_lock_is_exclusive_per_holder(tmp_path: Path) -> None:
    leases = Leases(tmp_path)
    leases.take("vault")
    path = next((tmp_path / "leases" / "vault").glob("*.lock"))
    with open(path, "a+b") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    leases.release()
    assert not path.exists()


def test_last_failed_deselection_is_respected_when_choosing_services(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(
        """
def test_needs_redis(aikernel_redis):
    pass

def test_plain():
    assert False
"""
    )
    first = pytester.runpytest_subprocess("--sw")
    first.assert_outcomes(failed=1, skipped=1)
    first.stdout.fnmatch_lines(["aikernel: services needed by the selected tests: redis"])
    # --sw before --lf: before pytest 8.4 a run without --sw forgets stepwise's last failure
    stepwise = pytester.runpytest_subprocess("--sw")
    stepwise.assert_outcomes(failed=1)
    assert "services needed" not in stepwise.stdout.str()
    again = pytester.runpytest_subprocess("--lf")
    again.assert_outcomes(failed=1)
    assert "services needed" not in again.stdout.str()


def test_image_overrides_are_listed_only_for_services_the_run_uses(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("AIKERNEL_IMAGE_KAFKA", "example/kafka:1")
    monkeypatch.setenv("AIKERNEL_IMAGE_REDIS", "example/redis:2")
    pytester.makepyfile("def test_x(aikernel_redis):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(
        ["aikernel: image redis=example/redis:2 (from env AIKERNEL_IMAGE_REDIS)"]
    )
    assert "example/kafka" not in result.stdout.str()


def test_ryuk_filter_is_sent_again_when_the_port_proxy_drops_the_first_connection() -> None:
    """Docker's port proxy accepts a connection to a just published port and closes it when the
    server behind it cannot be reached yet: the filter must be sent again, not given up."""
    import socket
    import threading

    from pytest_aikernel.runtime import reaper

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        first, _ = server.accept()
        first.close()  # what the proxy does before the reaper listens
        second, _ = server.accept()
        got.append(second.recv(100))
        second.sendall(b"ACK\n")
        second.recv(1)  # until the client goes away
        second.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        sock, why = reaper._send_filter("127.0.0.1", port, "label=a=b")
        assert sock is not None, why
        sock.close()
        thread.join(timeout=5)
        assert got == [b"label=a=b\r\n"]
    finally:
        server.close()


def test_ryuk_holds_only_an_acknowledged_filter_of_exactly_those_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain session's end hands its removal to a detached process only when Ryuk holds the
    session's filter (it backs that process up); any other answer keeps the removal in-process."""
    from pytest_aikernel.runtime import reaper

    monkeypatch.setattr(reaper, "_registered", {"label=pytest-aikernel.session=abc"})
    monkeypatch.setattr(reaper, "_status", "")
    assert reaper.holds({"pytest-aikernel.session": "abc"})
    assert not reaper.holds({"pytest-aikernel.session": "other"})
    assert not reaper.holds({"pytest-aikernel.session": "abc", "extra": "x"})
    monkeypatch.setattr(reaper, "_status", "Ryuk did not acknowledge the filter")
    assert not reaper.holds({"pytest-aikernel.session": "abc"})


def test_the_remover_names_its_usage_when_called_without_a_session(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pytest_aikernel.runtime import remover

    assert remover.main([]) == 2
    assert "python -m pytest_aikernel.runtime.remover SESSION_ID" in capsys.readouterr().err
