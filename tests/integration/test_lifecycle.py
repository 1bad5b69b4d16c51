"""The user's default path: Ryuk on, several processes at once, subsets of services, kills.

Each test runs whole pytest sessions in subprocesses (as users run them) and looks at the
engine's containers by label. The reuse tests use a private cache folder (``XDG_CACHE_HOME``), so
their reused stacks belong to them alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import containers_of

RYUK = os.environ.get("RYUK_CONTAINER_IMAGE", "")
needs_ryuk = pytest.mark.skipif(
    not RYUK or os.environ.get("TESTCONTAINERS_RYUK_DISABLED", "").lower() == "true",
    reason="needs Ryuk on: RYUK_CONTAINER_IMAGE (the tests/images/ryuk stand-in) set and "
    "TESTCONTAINERS_RYUK_DISABLED not true",
)
#: how long the stand-in Ryuk waits for its clients to come back (short, for the tests)
RECONNECT = 2.0

RECORD = """
import os, pathlib

def record(name, value):
    path = pathlib.Path(os.environ["AIKTEST_OUT"], name)
    tmp = path.with_name(f".{name}.{os.getpid()}")
    tmp.write_text(str(value))
    tmp.replace(path)  # readers never see a half-written file

def wait_for(name, timeout=120):
    import time
    path = pathlib.Path(os.environ["AIKTEST_OUT"], name)
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"nobody wrote {name}"
        time.sleep(0.05)
    return path.read_text()
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment of the inner runs: a private cache folder, an out folder, fast Ryuk."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("AIKTEST_OUT", str(out))
    monkeypatch.setenv("RYUK_RECONNECTION_TIMEOUT", f"{RECONNECT:g}s")
    yield dict(os.environ)
    subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", "down"],
        env=dict(os.environ),
        capture_output=True,
        timeout=300,
        check=False,
    )


def out(name: str) -> str:
    return Path(os.environ["AIKTEST_OUT"], name).read_text()


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=600)


def spawn(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    """An inner pytest run in the background (its output is read when it ends)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def wait_file(name: str, proc: subprocess.Popen[str] | None = None, timeout: float = 180) -> str:
    path = Path(os.environ["AIKTEST_OUT"], name)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the inner run ended before writing {name}:\n{proc.stdout.read()}"
            )  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"nobody wrote {name}"
        time.sleep(0.05)
    return path.read_text()


def wait_gone(client: docker.DockerClient, session: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    left = containers_of(client, session)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = containers_of(client, session)
    return left


def ids(client: docker.DockerClient, session: str) -> dict[str, str]:
    found = client.containers.list(
        all=True, ignore_removed=True, filters={"label": f"pytest-aikernel.session={session}"}
    )
    return {c.labels["pytest-aikernel.service"]: c.id for c in found}


# ---- 1. Ryuk on, several services ------------------------------------------------------------


@needs_ryuk
def test_ryuk_on_starts_the_readme_example_and_reaps_a_killed_plain_run(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_readme="""
import pytest
from helper import record, wait_for

def test_catalog(aikernel_postgres, aikernel_vault, request):
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("aikernel",)
    entry = aikernel_vault.client().secrets.kv.v2.read_secret_version(
        path="aikernel/postgres", mount_point="secret", raise_on_deleted_version=True)
    assert entry["data"]["data"]["password"] == aikernel_postgres.password
    record("session", request.getfixturevalue("aikernel_stack").session_id)
    wait_for("never")  # hangs here until killed

@pytest.mark.aikernel_stack("redis")
def test_cache(aikernel_stack):
    cache = aikernel_stack["redis"].client()
    cache.set("greeting", "hello")
    assert cache.get("greeting") == b"hello"
""",
    )
    proc = spawn(pytester)
    try:
        session = wait_file("session", proc)
        assert set(containers_of(docker_api, session)) == {"postgres", "redis", "vault"}
        reapers = docker_api.containers.list(
            ignore_removed=True, filters={"name": "testcontainers-ryuk-"}
        )
        assert reapers, "Ryuk is on: testcontainers started its reaper"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        began = time.monotonic()
        # no later run: Ryuk alone removes the killed run's stack
        left = wait_gone(docker_api, session, timeout=RECONNECT + 30)
        assert left == {}, proc.stdout.read() if proc.stdout else ""
        print(f"Ryuk removed the killed run's stack {time.monotonic() - began:.1f} s after SIGKILL")
        assert not docker_api.networks.list(filters={"label": f"pytest-aikernel.session={session}"})
    finally:
        stop(proc)


@needs_ryuk
def test_a_run_killed_while_its_stack_starts_leaves_nothing_after_the_next_session(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    """Ryuk's container starts beside the stack's, so a run killed in its first second may die
    before Ryuk holds its filter: whatever Ryuk does not remove, the next session's sweep does."""
    pytester.makepyfile(
        test_killed="""
def test_catalog(aikernel_postgres, aikernel_vault, aikernel_redis):
    pass
""",
        test_next="""
import pytest

@pytest.mark.aikernel_stack("redis")
def test_cache(aikernel_stack):
    aikernel_stack["redis"].client().ping()
""",
    )
    label = {"label": "pytest-aikernel.service"}
    before = {c.id for c in docker_api.containers.list(all=True, filters=label)}
    proc = spawn(pytester, "test_killed.py")
    try:
        deadline = time.monotonic() + 120
        new: list[docker.models.containers.Container] = []
        while not new:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the inner run started no container"
            found = docker_api.containers.list(all=True, ignore_removed=True, filters=label)
            new = [c for c in found if c.id not in before]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # the stack is starting: nothing is ready yet
        proc.wait()
        session = new[0].labels["pytest-aikernel.session"]
        # the next session, at once: its sweep finds the dead owner's containers and network
        result = run(pytester, "test_next.py")
        assert result.ret == 0, result.stdout.str()
        left = wait_gone(docker_api, session, timeout=10)
        assert left == {}, left
        assert not docker_api.networks.list(filters={"label": f"pytest-aikernel.session={session}"})
    finally:
        stop(proc)


@needs_ryuk
def test_ryuk_removes_the_stack_when_the_sessions_detached_remover_cannot(
    pytester: pytest.Pytester,
    docker_api: docker.DockerClient,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the end of a plain session that Ryuk holds, a detached process removes the stack and
    pytest does not wait. Here that process cannot reach the engine (the test points DOCKER_HOST,
    which it inherits, at nothing): the stack is still there after pytest returned, and Ryuk
    removes it once its reconnection timeout has passed."""
    reconnect = 8.0  # long enough to see the stack still there after the run
    monkeypatch.setenv("RYUK_RECONNECTION_TIMEOUT", f"{reconnect:g}s")
    pytester.makepyfile(
        helper=RECORD,
        test_end="""
import os
from helper import record

def test_x(aikernel_redis, request):
    assert aikernel_redis.client().ping()
    record("session", request.getfixturevalue("aikernel_stack").session_id)
    # the session's end spawns the remover with this environment: it reaches no engine
    os.environ["DOCKER_HOST"] = "unix:///nonexistent/aikernel-test.sock"
""",
    )
    result = run(pytester, "test_end.py")
    result.assert_outcomes(passed=1)
    ended = time.monotonic()
    session = out("session")
    assert set(containers_of(docker_api, session)) == {"redis"}, "the remover removed nothing"
    left = wait_gone(docker_api, session, timeout=reconnect + 30)
    assert left == {}, left
    assert not docker_api.networks.list(filters={"label": f"pytest-aikernel.session={session}"})
    print(f"Ryuk removed the stack {time.monotonic() - ended:.1f} s after pytest returned")


@needs_ryuk
def test_ryuk_on_full_run_passes_and_says_so_in_the_header(
    pytester: pytest.Pytester, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.aikernel_stack("postgres", "postgres-replica", "redis", "redis-replica", "vault")
def test_all(aikernel_stack):
    assert len(aikernel_stack) == 5
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"aikernel: Ryuk reaper on ({RYUK})"])


def test_unavailable_reaper_image_is_said_once_and_the_run_goes_on(
    pytester: pytest.Pytester,
    docker_api: docker.DockerClient,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TESTCONTAINERS_RYUK_DISABLED", raising=False)
    monkeypatch.setenv("RYUK_CONTAINER_IMAGE", "aikernel-standin/no-such-ryuk:1")
    pytester.makepyfile(
        helper=RECORD,
        test_x="""
from helper import record

def test_x(aikernel_redis, request):
    assert aikernel_redis.client().ping()
    record("session", request.getfixturevalue("aikernel_stack").session_id)
""",
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert text.count("Ryuk reaper unavailable") == 1, text
    assert "the plugin's own cleanup removes its containers" in text
    assert containers_of(docker_api, out("session")) == {}


# ---- 2. Ryuk never removes what outlives its process -------------------------------------------


@needs_ryuk
def test_ryuk_spares_a_killed_reuse_run_stack(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_hold="""
from helper import record, wait_for

def test_hold(aikernel_redis, request):
    record("session", request.getfixturevalue("aikernel_stack").session_id)
    wait_for("never")
""",
    )
    proc = spawn(pytester, "--aikernel-reuse")
    try:
        session = wait_file("session", proc)
        before = ids(docker_api, session)
        assert set(before) == {"redis"}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(RECONNECT + 6)  # Ryuk would have reaped by now
        assert ids(docker_api, session) == before, "the reused stack survived its run's death"
    finally:
        stop(proc)
    # and the next reuse run attaches to it
    pytester.makepyfile(
        test_hold="""
def test_again(aikernel_redis):
    assert aikernel_redis.client().ping()
"""
    )
    result = run(pytester, "--aikernel-reuse")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["aikernel: reusing redis*"])
    assert ids(docker_api, session) == before


@needs_ryuk
def test_ryuk_spares_the_xdist_stack_when_the_worker_that_started_it_dies(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_crash="""
import os, signal, time
import pytest
from helper import record, wait_for

@pytest.mark.parametrize("i", range(4))
def test_one(request, i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    if worker == "gw0":  # gw0 starts the stack, waits until gw1 uses it, then dies
        request.getfixturevalue("aikernel_redis")
        record("up-gw0", request.getfixturevalue("aikernel_stack").session_id)
        wait_for("up-gw1")
        os.kill(os.getpid(), signal.SIGKILL)
    wait_for("up-gw0")
    redis = request.getfixturevalue("aikernel_redis")
    record("up-gw1", "attached")
    time.sleep(%s)  # longer than Ryuk's reconnection timeout
    assert redis.client().ping()
"""
        % (RECONNECT + 6),
    )
    result = run(pytester, "-n", "2")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 1, result.stdout.str()  # the killed worker's test
    assert outcomes.get("passed", 0) == 3, result.stdout.str()
    session = out("up-gw0")
    assert containers_of(docker_api, session) == {}, "the controller removed it at the end"


# ---- 3. reuse serves every subset -----------------------------------------------------------------

SUBSETS = """
import pytest

def test_a(aikernel_postgres):
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

def test_b(aikernel_redis):
    assert aikernel_redis.client().ping()
"""


def test_reuse_keeps_one_container_per_service_across_subsets(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(test_subsets=SUBSETS)
    seen: list[dict[str, str]] = []
    for k in ("test_a", "test_b", "test_a", "test_b"):
        result = run(pytester, "--aikernel-reuse", "-k", k)
        result.assert_outcomes(passed=1)
        match = re.search(r"session (r\w+)", result.stdout.str())
        assert match is not None, result.stdout.str()
        seen.append(ids(docker_api, match.group(1)))
    assert set(seen[0]) == {"postgres"}
    assert seen[1] == {**seen[0], **seen[1]} and set(seen[1]) == {"postgres", "redis"}
    assert seen[3] == seen[2] == seen[1], "nothing restarted after the first two runs"


def test_aikernel_up_then_reuse_on_a_subset_attaches(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(test_subsets=SUBSETS)
    up = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", "up", "postgres", "redis", "vault"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    session = re.search(r"session (r\w+)", up.stderr)
    assert session is not None, up.stderr
    before = ids(docker_api, session.group(1))
    assert set(before) == {"postgres", "redis", "vault"}
    result = run(pytester, "--aikernel-reuse", "-k", "test_a")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["aikernel: reusing postgres*"])
    assert ids(docker_api, session.group(1)) == before, "the `aikernel up` stack is untouched"


# ---- 4. a run never removes what another live run holds ----------------------------------------


def test_concurrent_reuse_runs_with_other_subsets_and_settings_leave_each_other_alone(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_holder="""
from helper import record, wait_for

def test_holds_a_connection(aikernel_postgres, request):
    with aikernel_postgres.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS catalog.held (n int)")
        conn.commit()
        record("session", request.getfixturevalue("aikernel_stack").session_id)
        wait_for("others-done", timeout=300)
        assert conn.execute("SELECT 1").fetchone() == (1,)
""",
        test_other="""
def test_other(aikernel_redis, aikernel_postgres):
    assert aikernel_redis.client().ping()
""",
    )
    pytester.path.joinpath("changed.sql").write_text("CREATE TABLE catalog.changed (n int);\n")
    holder = spawn(pytester, "--aikernel-reuse", "test_holder.py")
    try:
        session = wait_file("session", holder)
        postgres = ids(docker_api, session)["postgres"]
        # another subset, started while the first run holds postgres: grows the stack
        grow = run(pytester, "--aikernel-reuse", "test_other.py")
        grow.assert_outcomes(passed=1)
        assert ids(docker_api, session)["postgres"] == postgres
        # other settings for postgres: the held one must not be replaced
        changed = run(
            pytester, "--aikernel-reuse", "--aikernel-postgres-init=changed.sql", "test_other.py"
        )
        changed.assert_outcomes(passed=1)
        changed.stdout.fnmatch_lines(["*reused postgres must be replaced*in use by pid*own*"])
        assert ids(docker_api, session)["postgres"] == postgres
        # `aikernel down` keeps what a live run holds and says so
        down = subprocess.run(
            [sys.executable, "-m", "pytest_aikernel", "down"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert down.returncode == 0, down.stderr
        assert re.search(r"kept reused postgres .*in use by pid \d+", down.stderr), down.stderr
        assert ids(docker_api, session)["postgres"] == postgres
        Path(os.environ["AIKTEST_OUT"], "others-done").write_text("1")
        text, _ = holder.communicate(timeout=120)
        assert holder.returncode == 0, text
    finally:
        stop(holder)
    # once nobody holds it, a run with other settings replaces it
    changed = run(
        pytester, "--aikernel-reuse", "--aikernel-postgres-init=changed.sql", "test_other.py"
    )
    changed.assert_outcomes(passed=1)
    changed.stdout.fnmatch_lines(["aikernel: replacing reused postgres*settings changed*"])
    assert ids(docker_api, session)["postgres"] != postgres


# ---- 5. services started on demand under xdist --------------------------------------------------


def test_services_asked_for_mid_session_under_xdist_start_once(
    pytester: pytest.Pytester, docker_api: docker.DockerClient, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        helper=RECORD,
        test_demand="""
import os, uuid
import pytest
from helper import record

@pytest.mark.parametrize("i", range(6))
def test_on_demand(request, i):
    redis = request.getfixturevalue("aikernel_redis")
    assert redis.client().ping()
    if i % 2:
        vault = request.getfixturevalue("aikernel_vault")
        assert vault.client().is_authenticated()
    stack = request.getfixturevalue("aikernel_stack")
    record(uuid.uuid4().hex, stack.session_id + " " + stack.running("redis").container_id)
""",
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=6)
    lines = {p.read_text() for p in Path(os.environ["AIKTEST_OUT"]).iterdir()}
    assert len(lines) == 1, f"one session, one redis container: {lines}"


# ---- failures are reported once; deselection is respected ------------------------------------


def test_a_failed_start_is_reported_in_full_once(
    pytester: pytest.Pytester, env: dict[str, str]
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.parametrize("i", range(3))
def test_x(aikernel_redis, i):
    pass
"""
    )
    result = run(pytester, "--aikernel-image", "redis=aikernel-standin/nonexistent:1")
    result.assert_outcomes(errors=3)
    text = result.stdout.str()
    # the error sections (pytest's short summary repeats each error's text: its own business)
    errors = text.split("= ERRORS =", 1)[1].split("short test summary info", 1)[0]
    assert errors.count("could not be pulled") == 1, text
    pointers = re.findall(
        r"ERROR at setup of test_x\[[12]\] _+\npytest-aikernel could not start the stack: redis "
        r"failed\. \(reported in full at test_a_failed_start_is_reported_in_full_once\.py::"
        r"test_x\[0\]\)",
        errors,
    )
    assert len(pointers) == 2, text
