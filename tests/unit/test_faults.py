"""Faults without Docker: the fault-wait setting, the cross-process locks, argument checks, and
which services a test that asks for ``aikernel_faults`` needs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_aikernel import FaultError, FaultWaitTimeout, PostgresService
from pytest_aikernel.faults import FaultLocks
from pytest_aikernel.services import names
from pytest_aikernel.settings import RawSources, resolve
from pytest_aikernel.toxics import KINDS, NetworkFaults


def _raw(tmp_path: Path, **kw: dict[str, str]) -> RawSources:
    return RawSources(
        cli=kw.get("cli", {}),
        ini=kw.get("ini", {}),
        override={},
        env=kw.get("env", {}),
        ini_dir=tmp_path,
        cwd=tmp_path,
        inipath=str(tmp_path / "pytest.ini"),
    )


def test_fault_wait_default_and_precedence(tmp_path: Path) -> None:
    assert resolve(_raw(tmp_path), names()).fault_wait == 300
    s = resolve(_raw(tmp_path, cli={"fault_wait": "5"}, env={"AIKERNEL_FAULT_WAIT": "7"}), names())
    assert (s.fault_wait, s.source_of("fault_wait")) == (5.0, "--aikernel-fault-wait")
    s = resolve(_raw(tmp_path, env={"AIKERNEL_FAULT_WAIT": "7"}, ini={"fault_wait": "9"}), names())
    assert (s.fault_wait, s.source_of("fault_wait")) == (7.0, "env AIKERNEL_FAULT_WAIT")


def test_fault_wait_rejects_a_bad_value(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="AIKERNEL_FAULT_WAIT"):
        resolve(_raw(tmp_path, env={"AIKERNEL_FAULT_WAIT": "soon"}), names())


HOLDER = """
import sys, time
from pathlib import Path
from pytest_aikernel.faults import FaultLocks
locks = FaultLocks(Path(sys.argv[1]))
locks.share(["redis"], 5, "t::holder")
locks.exclusive("redis", 5, "t::holder")
Path(sys.argv[2]).write_text("held")
time.sleep(float(sys.argv[3]))
"""


def _hold(tmp_path: Path, seconds: float) -> subprocess.Popen[bytes]:
    flag = tmp_path / "held"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(HOLDER),
            str(tmp_path / "locks"),
            str(flag),
            str(seconds),
        ]
    )
    deadline = time.monotonic() + 30
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def test_a_test_waits_for_a_fault_in_another_process_and_names_its_holder(
    tmp_path: Path,
) -> None:
    proc = _hold(tmp_path, 30)
    try:
        locks = FaultLocks(tmp_path / "locks")
        began = time.monotonic()
        with pytest.raises(FaultWaitTimeout, match=r"waited 0.5 s for redis, which test t::holder"):
            locks.share(["redis", "postgres"], 0.5, "t::waiter")
        assert time.monotonic() - began >= 0.5
        # another service is free meanwhile
        locks.release_all()
        locks.share(["postgres"], 0.5, "t::other")
        assert locks.held == {"postgres": "sh"}
        locks.close()
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_free_when_its_holder_dies(tmp_path: Path) -> None:
    proc = _hold(tmp_path, 30)
    proc.kill()
    proc.wait()
    locks = FaultLocks(tmp_path / "locks")
    locks.share(["redis"], 2, "t::next")
    locks.exclusive("redis", 2, "t::next")
    assert locks.holder("redis") == f"test t::next (pid {os.getpid()})"
    locks.close()


def test_an_exclusive_fault_waits_for_shared_users(tmp_path: Path) -> None:
    locks = FaultLocks(tmp_path / "locks")
    locks.share(["redis"], 1, "t::user")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from pytest_aikernel.faults import FaultLocks
        from pytest_aikernel.errors import FaultWaitTimeout
        locks = FaultLocks(Path(sys.argv[1]))
        try:
            locks.exclusive("redis", 0.3, "t::faulter")
        except FaultWaitTimeout as exc:
            print("TIMEOUT", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "locks")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "TIMEOUT t::faulter: waited 0.3 s to take redis alone" in done.stdout
    locks.close()


def test_markers_round_trip(tmp_path: Path) -> None:
    locks = FaultLocks(tmp_path)
    locks.mark("redis", "fault", {"test": "t::a", "pid": 1})
    assert locks.marked("redis", "fault") == {"test": "t::a", "pid": 1}
    locks.mark("redis", "fault", None)
    assert locks.marked("redis", "fault") is None


def test_an_object_not_from_a_stack_says_so() -> None:
    pg = PostgresService(host="127.0.0.1", port=1, user="u", password="p", internal_host="pg")
    with pytest.raises(FaultError, match="not attached to a running stack"):
        pg.stop()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.toxic("redis", "nope"), r"toxic\('redis', 'nope'\): unknown toxic"),
        (lambda f: f.toxic("redis", "latency", direction="up"), "direction must be one of"),
        (lambda f: f.toxic("redis", "latency", toxicity=2.0), "toxicity must be between"),
        (lambda f: f.toxic("redis", "latency", speed=1), "unknown attribute speed"),
        (lambda f: f.toxic("redis", "latency", latency=-1), "latency must be a whole number"),
        (lambda f: f.latency("redis", -300), r"latency\('redis'\): ms must be"),
        (lambda f: f.bandwidth("redis", 1.5), r"bandwidth\('redis'\): kbps must be"),
        (lambda f: f.limit_data("redis", -1), r"limit_data\('redis'\): nbytes must be"),
    ],
)
def test_bad_toxics_are_refused_before_anything_is_made(call, message) -> None:
    faults = NetworkFaults(stack=None, name="aik_main_1_abc", test="t")  # type: ignore[arg-type]
    with pytest.raises(FaultError, match=message):
        call(faults)


def test_known_toxics_are_toxiproxys() -> None:
    assert set(KINDS) == {
        "latency",
        "bandwidth",
        "slow_close",
        "timeout",
        "reset_peer",
        "slicer",
        "limit_data",
    }


def test_aikernel_faults_brings_toxiproxy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_net(aikernel_faults, aikernel_redis):
            pass

        def test_plain(aikernel_redis):
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        ["aikernel: services needed by the selected tests: redis, toxiproxy"]
    )
    result = pytester.runpytest("--collect-only", "-q", "-k", "plain")
    result.stdout.fnmatch_lines(["aikernel: services needed by the selected tests: redis"])


def test_a_waiting_fault_goes_before_new_tests(tmp_path: Path) -> None:
    """A worker whose tests all need redis releases its shared lock between tests: a fault
    waiting in another process must get the service before that worker's next test."""
    locks = FaultLocks(tmp_path / "locks")
    locks.share(["redis"], 1, "t::first")
    flag = tmp_path / "faulted"
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from pytest_aikernel.faults import FaultLocks
        locks = FaultLocks(Path(sys.argv[1]))
        locks.exclusive("redis", 30, "t::faulter")
        Path(sys.argv[2]).write_text(str(time.monotonic()))
        time.sleep(1.0)
        locks.release_all()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "locks"), str(flag)])
    try:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "locks").glob("redis.want.*")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        locks.release_all()  # the first test ends; the next one starts at once
        locks.share(["redis"], 30, "t::second")
        assert flag.exists(), "the next test ran before the waiting fault"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        locks.close()
