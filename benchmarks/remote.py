"""Remote engine benchmark: the same figures on the local engine and on a tcp:// engine, one run.

    eval "$(tests/images/build)"          # the stand-ins (AIKERNEL_IMAGE_*, RYUK_CONTAINER_IMAGE)
    sudo -E python benchmarks/remote.py --repeat 5 --tests 100

The remote engine is the second dockerd of tests/remote/engine, in a network namespace on this
machine, at tcp://10.213.77.2:2375. The script runs `tests/remote/engine up` with the postgres,
redis, vault and Ryuk images (which copies what is missing from the local engine) and, if the
engine was not running before, `tests/remote/engine down` at the end (its data root, the copied
images, is kept). That needs root. `--remote URL` uses another engine that already runs and holds
the images instead: nothing is brought up or down.

Every figure is taken on both engines, side by side, in separate processes: a worker process per
engine (its own DOCKER_HOST), and a pytest process per engine. One process cannot serve both
engines reliably: the plugin finds the engine through DOCKER_HOST each time it makes a client,
but testcontainers' Ryuk reaper is one per process and stays on the engine it was started on.

  * startup  - Stack.start(["postgres", "redis", "vault"]) to ready and seeded (the plugin's
               parallel start, seeding included), --repeat times per engine, the two engines
               taking turns (the first in a round alternates); each stack is removed with
               stack.stop(), also timed. Ryuk is started once per worker before these, and timed
               apart;
  * fixtures - a real `python -m pytest` run per engine in a throw-away project: --tests tests,
               each taking aikernel_pg (a clone), aikernel_redis_db and aikernel_vault_path and
               writing one row, key and secret. Clock fixtures between them give each fixture's
               setup and teardown from inside pytest (the cost a test pays, as
               benchmarks/isolation.py counts it, without the test's own writes); the whole
               setup and teardown phases of each test are timed too (pytest, the plugin's hooks
               and the three fixtures). The stack's start in that run is not counted;
  * kill     - on a fresh stack per engine, --kills times: kill() (SIGKILL) and start() (to
               ready) of postgres, then the heal the plugin runs after such a test. The first
               kill of a stack also makes the keeper container of postgres' tmpfs data;
  * context  - on the same stack: the engine API's round trip (GET /_ping) and SELECT 1 on an
               open connection to postgres (the path from the test process to a published port).

Snapshots (docs/snapshots.md) are off for both engines unless --snapshots on: a postgres started
from a snapshot keeps its data on a disk volume instead of tmpfs, which changes its start and its
clones, so an engine that holds a snapshot and one that does not would not be compared like for
like. The script prints how many postgres starts began from a snapshot on each engine.

It prints each run, then one table with both engines and the ratio remote/local. Everything is
removed at the end, also after an error, Ctrl-C or SIGTERM: each stack by its stack.stop() (the
workers and pytest runs get one SIGINT and remove their stacks; they run in sessions of their own
so that a second Ctrl-C cannot cut that short), then the script checks both engines for anything
left of this run (the workers' stacks carry a label with the run's id; the pytest runs' sessions
are read from their output). Only the local engine's socket and its ports on 127.0.0.1, and the
remote engine's address, are contacted.

The namespaced engine is shared with tests/integration/test_remote.py (a CI run on this machine
runs it): before it starts, the script waits while another `tests/remote/engine` process runs or
the engine holds containers that are not its own; it looks again between steps and warns at the
end if it saw any (then rerun), and it leaves the engine up if someone else uses it by then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

# as in the other benchmarks: published ports through the engine's address, Ryuk as the
# environment sets it
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "tests" / "remote" / "engine"
LOCAL = "unix:///var/run/docker.sock"
THREE = ["postgres", "redis", "vault"]
LABEL_SESSION = "pytest-aikernel.session"
#: on every container, network and volume of the workers' stacks: this run's id
LABEL_RUN = "pytest-aikernel.benchmark-run"
#: variables that would point a child at another engine than the one it is given
ENGINE_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
#: other users of the namespaced engine (tests/integration/test_remote.py, a CI run)
OTHERS = ("tests/remote/engine", "pytest.*test_remote")


def fmt(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def span(low: float, high: float) -> str:
    """ "low-high", the unit said once when both take the same one."""
    if high < 0.001:
        return f"{low * 1000:.2f}-{high * 1000:.2f}"
    if high < 1.0:
        return f"{low * 1000:.1f}-{high * 1000:.1f}"
    if low >= 1.0:
        return f"{low:.2f}-{high:.2f}"
    return f"{fmt(low)}-{fmt(high)}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * 0.95) - 1)]


# ---- worker: one process per engine --------------------------------------------------------------


def _settings() -> Any:
    from pytest_aikernel.services import registry
    from pytest_aikernel.settings import RawSources, resolve

    raw = RawSources(cli={}, ini={}, env=dict(os.environ), ini_dir=os.getcwd(), cwd=os.getcwd())  # type: ignore[arg-type]
    return resolve(raw, tuple(registry()))


def _timed(call: Callable[[], Any]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


class ApiCalls:
    """Counts the requests this process sends to a Docker engine (docker-py, the plugin's and
    testcontainers' clients): what a real remote engine would charge one round trip each."""

    def __init__(self) -> None:
        import threading

        from docker.api.client import APIClient

        self.count = 0
        lock = threading.Lock()
        original = APIClient.send
        counter = self

        def send(client: Any, request: Any, **kwargs: Any) -> Any:
            with lock:
                counter.count += 1
            return original(client, request, **kwargs)

        APIClient.send = send  # type: ignore[method-assign, assignment]

    def since(self, mark: int) -> int:
        return self.count - mark


def op_ryuk() -> dict[str, Any]:
    """Start this process's Ryuk (as the first stack would) and time it."""
    from testcontainers.core.labels import SESSION_ID

    from pytest_aikernel.runtime import reaper

    began = time.perf_counter()
    why = reaper.register({LABEL_SESSION: f"bench-warmup-{uuid.uuid4().hex[:12]}"})
    return {
        "seconds": time.perf_counter() - began,
        "status": reaper.status(),
        "why": why,
        "ryuk": f"testcontainers-ryuk-{SESSION_ID}",
    }


def _stack(settings: Any) -> Any:
    from pytest_aikernel.stack import Stack

    return Stack(settings, extra_labels={LABEL_RUN: os.environ["BENCH_RUN"]})


def op_start(settings: Any, api: ApiCalls) -> dict[str, Any]:
    stack = _stack(settings)
    calls: dict[str, int] = {}
    try:
        mark = api.count
        began = time.perf_counter()
        stack.start(THREE)
        ready = time.perf_counter() - began
        calls["start"] = api.since(mark)
        timings = dict(stack.timings)
        engine = stack.runtime.engine.describe()
        snapshot = str(getattr(stack, "from_snapshot", {}).get("postgres", ""))
    finally:
        mark = api.count
        began = time.perf_counter()
        stack.stop()
        stopped = time.perf_counter() - began
        calls["stop"] = api.since(mark)
    return {
        "calls": calls,
        "session": stack.session_id,
        "ready": ready,
        "timings": timings,
        "stop": stopped,
        "engine": engine,
        "snapshot": snapshot,
    }


def op_kill(settings: Any, kills: int, api: ApiCalls) -> dict[str, Any]:
    """kill() + start() of postgres on a fresh stack (what faults.py does, on fewer runs), and
    the context figures on the same stack."""
    stack = _stack(settings)
    out: dict[str, Any] = {"kill": [], "start": [], "heal": [], "ping": [], "select": []}
    calls: dict[str, list[int]] = {"kill": [], "restart": [], "heal": []}
    out["calls"] = calls
    try:
        stack.start(THREE)
        out["session"] = stack.session_id
        client = stack.runtime.client
        for _ in range(20):
            out["ping"].append(_timed(client.ping))
        with stack["postgres"].connect() as conn:
            conn.execute("SELECT 1").fetchone()
            for _ in range(20):
                out["select"].append(_timed(lambda: conn.execute("SELECT 1").fetchone()))
        obj = stack["postgres"]
        for i in range(kills):
            stack.faults.begin(f"benchmarks/remote.py::kill[{i}]", ["postgres"])
            mark = api.count
            out["kill"].append(_timed(obj.kill))
            calls["kill"].append(api.since(mark))
            mark = api.count
            out["start"].append(_timed(obj.start))
            calls["restart"].append(api.since(mark))
            mark = api.count
            began = time.perf_counter()
            try:
                failures = stack.faults.heal()
            finally:
                stack.faults.end()
            out["heal"].append(time.perf_counter() - began)
            calls["heal"].append(api.since(mark))
            if failures:
                raise RuntimeError("heal failed: " + "; ".join(failures))
    finally:
        stack.stop()
    return out


def _worker_signals() -> None:
    """The first SIGINT/SIGTERM interrupts the current step (its stack is removed in a finally);
    later ones are ignored so that the removal is not cut short."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def worker() -> int:
    """Read one JSON command per line on stdin, answer one JSON line on stdout."""
    _worker_signals()
    out = sys.stdout
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr
    settings = _settings()
    api = ApiCalls()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            try:
                if op == "ryuk":
                    answer = op_ryuk()
                elif op == "start":
                    answer = op_start(settings, api)
                elif op == "kill":
                    answer = op_kill(settings, int(command["kills"]), api)
                else:
                    answer = {"error": f"unknown op {op!r}"}
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    except KeyboardInterrupt:
        return 130
    return 0


# ---- main: engines, workers, pytest runs ---------------------------------------------------------


@dataclass
class Side:
    """One engine and what was measured on it."""

    name: str
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    sessions: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: names of the Ryuk containers of its processes
    ryuk: list[str] = field(default_factory=list)
    #: per stack start (the workers' and the pytest run's): the postgres snapshot it began
    #: from ("" when seeded)
    snapshots: list[str] = field(default_factory=list)

    def add(self, key: str, *values: float) -> None:
        self.values.setdefault(key, []).extend(values)

    def ask(self, **command: Any) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError(f"the {self.name} worker is not running")
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker ended (exit code {proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} engine, {command['op']}: {answer['error']}")
        if answer.get("session"):
            self.sessions.append(str(answer["session"]))
        if answer.get("ryuk"):
            self.ryuk.append(str(answer["ryuk"]))
        return answer


def engine_env(url: str, snapshots: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_VARS}
    env["DOCKER_HOST"] = url
    env["TESTCONTAINERS_CONNECTION_MODE"] = "docker_host"
    env["AIKERNEL_SNAPSHOTS"] = snapshots
    return env


def other_processes() -> list[str]:
    """Other processes that use the namespaced engine's script now ("pid command" each)."""
    found: list[str] = []
    for pattern in OTHERS:
        done = subprocess.run(
            ["pgrep", "-af", pattern], capture_output=True, text=True, check=False
        )
        for line in done.stdout.splitlines():
            pid = line.split(" ", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and line not in found:
                found.append(line)
    return found


class Remote:
    """The namespaced engine: brought up (images copied) and, if this script did so, down.

    Other users of it (a CI run's tests/integration/test_remote.py: its inner pytest runs carry
    no "test_remote" in their command line) are seen as the script's processes and as
    containers on the engine that are not the script's: between two steps, the script's stacks
    are all removed, and only its own Ryuk containers may run there.
    """

    def __init__(self, url: str | None, images: list[str]) -> None:
        self.given = url
        self.url = url or ""
        self.images = images
        self.started = False
        #: names of the script's own Ryuk containers on it (the remote side's list)
        self.ours: list[str] = []
        self.seen_others: list[str] = []

    def others(self) -> list[str]:
        """Processes and containers of others on the namespaced engine now (an engine given
        with --remote is not watched)."""
        if self.given:
            return []
        found = other_processes()
        if not self.url:
            return found
        import docker

        try:
            client = docker.DockerClient(base_url=self.url, timeout=10)
        except Exception:
            return found  # not running (yet): nothing of anyone on it
        try:
            for container in client.containers.list(all=True, ignore_removed=True):
                if container.name not in self.ours:
                    found.append(f"container {container.name} ({container.status})")
        except Exception as exc:
            found.append(f"(cannot list its containers: {type(exc).__name__}: {exc})")
        finally:
            client.close()
        return found

    def check_others(self) -> None:
        for line in self.others():
            if line not in self.seen_others:
                self.seen_others.append(line)

    def _find_running(self) -> None:
        """Look at the namespaced engine's containers too when it already runs."""
        if self.given or self.url:
            return
        status = subprocess.run(
            [str(ENGINE), "status"], capture_output=True, text=True, check=False
        )
        found = re.search(r"export DOCKER_HOST=(tcp://[^)\s]+)", status.stdout)
        if status.returncode == 0 and found:
            self.url = found.group(1)

    def wait_quiet(self) -> None:
        """Wait while another process uses the engine (its script, or containers on it)."""
        if self.given:
            return
        shown = False
        while True:
            self._find_running()
            busy = self.others()
            if not busy:
                return
            if not shown:
                print(
                    "waiting: another process uses the remote engine:\n  " + "\n  ".join(busy),
                    file=sys.stderr,
                )
                shown = True
            time.sleep(5)

    def up(self) -> str:
        if self.given:
            return self.given
        if os.geteuid() != 0:
            raise SystemExit(
                "tests/remote/engine needs root (a network namespace and a second dockerd); "
                "run as root, or pass --remote URL of an engine that already runs"
            )
        running = subprocess.run([str(ENGINE), "status"], capture_output=True, check=False)
        # set before `up`: an interrupted `up` is undone by `down` too
        self.started = running.returncode != 0
        began = time.perf_counter()
        done = subprocess.run(
            [str(ENGINE), "up", *self.images],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"tests/remote/engine up failed:\n{done.stderr[-3000:]}")
        match = re.fullmatch(r"export DOCKER_HOST=(\S+)\n?", done.stdout)
        if match is None:
            raise SystemExit(f"tests/remote/engine up printed {done.stdout!r}")
        self.url = match.group(1)
        state = "started" if self.started else "already running; missing images loaded"
        print(f"remote engine {match.group(1)}: {state} in {time.perf_counter() - began:.1f} s")
        return match.group(1)

    def down(self) -> None:
        if not self.started:
            return
        busy = self.others()
        if busy:
            # a CI run's test_remote came up meanwhile: its own down takes the engine down
            print("remote engine left up: another process uses it now:\n  " + "\n  ".join(busy))
            self.check_others()
            return
        began = time.perf_counter()
        done = subprocess.run(
            [str(ENGINE), "down"], capture_output=True, text=True, timeout=300, check=False
        )
        state = "down" if done.returncode == 0 else f"down FAILED:\n{done.stderr[-2000:]}"
        print(f"remote engine {state} in {time.perf_counter() - began:.1f} s (data root kept)")
        self.started = False


def start_worker(side: Side) -> None:
    # a session of its own: a Ctrl-C in the terminal reaches only this script, which passes
    # exactly one SIGINT on (a second one could cut a stack's removal short)
    side.proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=side.env,
        cwd=ROOT,
        text=True,
        start_new_session=True,
    )


def end_child(proc: subprocess.Popen[Any], interrupt: bool, timeout: float = 300.0) -> None:
    """Let a child end on its own, its stacks removed: a worker when its stdin closes, after one
    SIGINT with ``interrupt`` (it stops what it does and removes its stack)."""
    if interrupt and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  (pid {proc.pid} did not end in {timeout:.0f} s: killed)", file=sys.stderr)
        proc.kill()
        proc.wait()


# ---- the pytest runs -------------------------------------------------------------------------------

CONFTEST = """
import json, os, time
import pytest

KEY = pytest.StashKey[dict]()
RECORDS = []
CALLS = [0]


def _count_api_calls():
    from docker.api.client import APIClient

    original = APIClient.send

    def send(client, request, **kwargs):
        CALLS[0] += 1
        return original(client, request, **kwargs)

    APIClient.send = send


_count_api_calls()


def _clock(i):
    @pytest.fixture(name=f"clock{i}")
    def clock(request):
        marks = request.node.stash.setdefault(KEY, {})
        marks[f"set{i}"] = time.perf_counter()
        yield
        marks[f"down{i}"] = time.perf_counter()

    return clock


clock0, clock1, clock2, clock3 = (_clock(i) for i in range(4))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    before = CALLS[0]
    try:
        return (yield)
    finally:
        item.stash.setdefault(KEY, {})["calls"] = CALLS[0] - before


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    began = time.perf_counter()
    try:
        return (yield)
    finally:
        item.stash.setdefault(KEY, {})["setup"] = time.perf_counter() - began


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    began = time.perf_counter()
    try:
        return (yield)
    finally:
        marks = item.stash.setdefault(KEY, {})
        marks["teardown"] = time.perf_counter() - began
        # the last test's teardown also removes the session's stack
        marks["last"] = nextitem is None
        RECORDS.append(marks)


def pytest_sessionfinish(session):
    from testcontainers.core.labels import SESSION_ID

    with open(os.environ["BENCH_OUT"], "w") as fh:
        json.dump({"ryuk": f"testcontainers-ryuk-{SESSION_ID}", "records": RECORDS}, fh)
"""

TESTS = """
import os
import pytest


@pytest.mark.parametrize("i", range(int(os.environ["BENCH_TESTS"])))
def test_fixtures(i, clock0, aikernel_pg, clock1, aikernel_redis_db, clock2, aikernel_vault_path, clock3):
    aikernel_pg.execute("CREATE TABLE bench (x int)")
    aikernel_pg.execute("INSERT INTO bench VALUES (1)")
    aikernel_pg.commit()
    aikernel_redis_db.set("bench", "1")
    aikernel_vault_path.write("bench", value="1")
"""

FIXTURES = ("aikernel_pg", "aikernel_redis_db", "aikernel_vault_path")


def run_pytest(side: Side, tests: int) -> None:
    """One pytest run of ``tests`` tests on ``side``'s engine; its figures go to ``side``."""
    with tempfile.TemporaryDirectory(prefix="aikernel-remote-bench-") as tmp:
        root = Path(tmp)
        (root / "conftest.py").write_text(CONFTEST)
        (root / "test_bench.py").write_text(TESTS)
        out = root / "records.json"
        log = root / "output.txt"
        env = {
            **side.env,
            "BENCH_TESTS": str(tests),
            "BENCH_OUT": str(out),
            "XDG_CACHE_HOME": str(root / "cache"),
        }
        began = time.perf_counter()
        with log.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # see start_worker
            )
            try:
                proc.wait()
            except KeyboardInterrupt:
                end_child(proc, interrupt=True)  # pytest removes its stack, as on Ctrl-C
                raise
        wall = time.perf_counter() - began
        text = log.read_text(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"pytest on the {side.name} engine failed:\n{text[-4000:]}")
        found = re.search(r"session (\w+), ready in ([\d.]+) s", text)
        if found:
            side.sessions.append(found.group(1))
            side.add("pytest_stack", float(found.group(2)))
        side.add("pytest_wall", wall)
        data = json.loads(out.read_text())
        side.ryuk.append(str(data["ryuk"]))
        for marks in data["records"]:
            if not all(f"down{i}" in marks for i in range(4)):
                continue
            for i, fixture in enumerate(FIXTURES):
                setup = marks[f"set{i + 1}"] - marks[f"set{i}"]
                teardown = marks[f"down{i}"] - marks[f"down{i + 1}"]
                side.add(f"{fixture}:setup", setup)
                side.add(f"{fixture}:teardown", teardown)
                side.add(fixture, setup + teardown)
            side.add(
                "fixtures",
                marks["set3"] - marks["set0"] + marks["down0"] - marks["down3"],
            )
            if not marks["last"]:
                side.add("phases", marks["setup"] + marks["teardown"])
                side.add("api:test", marks.get("calls", 0))
        ready = re.search(r"aikernel: postgres ready in [\d.]+ s \(([^:]+):[^)]*\)", text)
        if ready:
            found = re.search(r"from snapshot (\w+)", ready.group(0))
            side.snapshots.append(found.group(1) if found else "")
        side.notes.append(f"postgres published at {ready.group(1) if ready else '?'}")


# ---- leftovers -----------------------------------------------------------------------------------


def leftovers(side: Side, run: str) -> str:
    """What is left on ``side``'s engine of this run: the workers' stacks (by the run's label,
    also a stack interrupted before its session was known) and the pytest runs' sessions
    ("" when nothing)."""
    import docker

    left: list[str] = []
    try:
        client = docker.DockerClient(base_url=side.url, timeout=30)
    except Exception as exc:
        return f"cannot check ({type(exc).__name__}: {exc})"
    try:
        selectors = [f"{LABEL_RUN}={run}", *(f"{LABEL_SESSION}={s}" for s in side.sessions)]
        for label in selectors:
            filters: dict[str, Any] = {"label": label}
            for kind, objects in (
                ("container", client.containers.list(all=True, filters=filters)),
                ("network", client.networks.list(filters=filters)),
                ("volume", client.volumes.list(filters=filters)),
            ):
                for obj in objects:
                    text = f"{kind} {getattr(obj, 'name', None) or obj.id}"
                    if text not in left:
                        left.append(text)
    except Exception as exc:
        return f"cannot check ({type(exc).__name__}: {exc})"
    finally:
        client.close()
    return ", ".join(left)


# ---- report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    #: "median (min-max)" or "median (p95)"
    spread: str = "range"


ROWS: list[tuple[str, list[Row]]] = [
    (
        "context",
        [
            Row("engine API round trip, GET /_ping (20 calls)", "ping"),
            Row("SELECT 1 on an open connection to postgres (20)", "select"),
            Row("Ryuk started and filter registered (once per process)", "ryuk"),
        ],
    ),
    (
        "1. stack start to ready, postgres + redis + vault",
        [
            Row("Stack.start() to ready and seeded", "ready"),
            Row("  postgres: container start to ready and seeded", "t:postgres"),
            Row("  redis: container start to ready", "t:redis"),
            Row("  vault: container start to ready and seeded", "t:vault"),
            Row("stack.stop() (containers, volumes, network removed)", "stop"),
            Row("stack start in the pytest run (1 per engine)", "pytest_stack"),
        ],
    ),
    (
        "2. per-test fixtures in a pytest run: setup + teardown (median, p95)",
        [
            Row("aikernel_pg (a clone)", "aikernel_pg", "p95"),
            Row("  setup / teardown", "aikernel_pg:setup", "split"),
            Row("aikernel_redis_db", "aikernel_redis_db", "p95"),
            Row("  setup / teardown", "aikernel_redis_db:setup", "split"),
            Row("aikernel_vault_path", "aikernel_vault_path", "p95"),
            Row("  setup / teardown", "aikernel_vault_path:setup", "split"),
            Row("the three fixtures of one test", "fixtures", "p95"),
            Row("test's setup + teardown phases (pytest, hooks, fixtures)*", "phases", "p95"),
            Row("whole pytest run (start, tests, stack removal)", "pytest_wall", "one"),
        ],
    ),
    (
        "3. kill (SIGKILL) + start of postgres",
        [
            Row("kill() (the first also makes the tmpfs keeper)", "kill"),
            Row("start() to ready", "start"),
            Row("kill() + start()", "kill+start"),
            Row("heal afterwards (the plugin's check after the test)", "heal"),
        ],
    ),
    (
        "engine API requests (a real remote engine charges a round trip for each)",
        [
            Row("Stack.start() of the three", "api:start", "count"),
            Row("stack.stop()", "api:stop", "count"),
            Row("one test with the three per-test fixtures*", "api:test", "count"),
            Row("postgres kill()", "api:kill", "count"),
            Row("postgres start() to ready", "api:restart", "count"),
            Row("heal afterwards", "api:heal", "count"),
        ],
    ),
]


def cell(values: list[float], row: Row, side: Side) -> str:
    if not values:
        return "n/a"
    if row.spread == "count":
        low, high, mid = int(min(values)), int(max(values)), median(values)
        return f"{mid:g}" + (f" ({low}-{high})" if low != high else "")
    if row.spread == "split":
        down = side.values.get(row.key.replace(":setup", ":teardown"), [])
        return f"{fmt(median(values))} / {fmt(median(down))}"
    if row.spread == "one" or len(values) == 1:
        return fmt(values[0]) if len(values) == 1 else fmt(median(values))
    if row.spread == "p95":
        return f"{fmt(median(values))} (p95 {fmt(p95(values))})"
    return f"{fmt(median(values))} ({span(min(values), max(values))})"


def report(local: Side, remote: Side, args: argparse.Namespace) -> None:
    for side in (local, remote):
        kills, starts = side.values.get("kill", []), side.values.get("start", [])
        side.values["kill+start"] = [a + b for a, b in zip(kills, starts, strict=True)]
    width = 58
    col = 30
    print(f"\nlocal: {local.url}   remote: {remote.url}")
    print(f"{'figure':{width}s} {'local':>{col}s} {'remote':>{col}s} {'remote/local':>12s}")
    for title, rows in ROWS:
        print(f"\n{title}")
        for row in rows:
            a, b = local.values.get(row.key, []), remote.values.get(row.key, [])
            if not a and not b:
                continue
            ratio = median(b) / median(a) if a and b and median(a) > 0 else float("nan")
            shown = "" if row.spread == "split" or math.isnan(ratio) else f"{ratio:.2f}"
            line = (
                f"  {row.label:{width - 2}s} {cell(a, row, local):>{col}s} "
                f"{cell(b, row, remote):>{col}s} {shown:>12s}"
            )
            print(line.rstrip())
    print(
        f"\nn: {args.repeat} stack starts, {args.tests} tests, {args.kills} kill(s) per engine; "
        "ratio: of the medians. *: the last test apart (its teardown removes the stack)"
    )


# ---- main ----------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def images() -> list[str]:
    from pytest_aikernel.services import image_for

    settings = _settings()
    out = [image_for(name, settings) for name in THREE]
    ryuk = os.environ.get("RYUK_CONTAINER_IMAGE")
    if ryuk and os.environ.get("TESTCONTAINERS_RYUK_DISABLED", "").lower() != "true":
        out.append(ryuk)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="stack starts per engine (5)")
    parser.add_argument("--tests", type=int, default=100, help="tests per pytest run (100)")
    parser.add_argument("--kills", type=int, default=1, help="kills of postgres per engine (1)")
    parser.add_argument("--local", default=LOCAL, help=f"the local engine ({LOCAL})")
    parser.add_argument(
        "--remote",
        metavar="URL",
        help="a remote engine that already runs and holds the images (default: bring up "
        "tests/remote/engine, and down again if it was not running)",
    )
    parser.add_argument(
        "--snapshots",
        choices=("off", "on"),
        default="off",
        help="AIKERNEL_SNAPSHOTS for both engines (default off: every postgres is seeded on "
        "tmpfs, and no snapshot image is made; with on, figures depend on which engine already "
        "holds a snapshot, and the snapshots made stay)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    if min(args.repeat, args.tests, args.kills) < 1:
        parser.error("--repeat, --tests and --kills must be >= 1")
    signal.signal(signal.SIGTERM, _terminate)

    names = images()
    print("images: " + ", ".join(names))
    remote = Remote(args.remote, names)
    local = Side("local", args.local, engine_env(args.local, args.snapshots))
    other = Side("remote", "", {})
    remote.ours = other.ryuk
    run = uuid.uuid4().hex[:12]
    for side in (local, other):
        side.env["BENCH_RUN"] = run
    began = time.perf_counter()
    interrupted = False
    try:
        remote.wait_quiet()
        other.url = remote.up()
        other.env = {**engine_env(other.url, args.snapshots), "BENCH_RUN": run}
        measure(local, other, remote, args)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: removing the stacks", file=sys.stderr)
    finally:
        # nothing may cut the removal short now
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for side in (local, other):
            if side.proc is not None:
                end_child(side.proc, interrupt=interrupted)
        for side in (local, other):
            if side.url and (side.proc is not None or side.sessions):
                left = leftovers(side, run)
                print(f"left on the {side.name} engine by this run: {left or 'nothing'}")
        remote.down()
    if interrupted:
        return 130
    report(local, other, args)
    for side in (local, other):
        for note in side.notes:
            print(f"{side.name} pytest run: {note}")
    for side in (local, other):
        used = sorted({key for key in side.snapshots if key})
        print(
            f"{side.name}: postgres started from a snapshot in "
            f"{sum(1 for key in side.snapshots if key)} of {len(side.snapshots)} stack starts"
            + (f" ({', '.join(used)})" if used else "")
            + f"; AIKERNEL_SNAPSHOTS={args.snapshots}"
        )
    print(f"total {time.perf_counter() - began:.0f} s")
    if remote.seen_others:
        print(
            "\nWARNING: another process used the remote engine during the run; rerun:\n  "
            + "\n  ".join(remote.seen_others)
        )
    return 0


def measure(local: Side, other: Side, remote: Remote, args: argparse.Namespace) -> None:
    both = (local, other)
    for side in both:
        start_worker(side)
    for side in both:
        answer = side.ask(op="ryuk")
        side.add("ryuk", answer["seconds"])
        why = f" ({answer['why']})" if answer["why"] else ""
        print(f"{side.name}: {answer['status']}{why}")
    for i in range(args.repeat):
        remote.check_others()
        shown = []
        for side in both if i % 2 == 0 else both[::-1]:
            answer = side.ask(op="start")
            if i == 0:
                print(f"{side.name}: {answer['engine']}")
            side.add("ready", answer["ready"])
            side.add("stop", answer["stop"])
            side.snapshots.append(answer["snapshot"])
            for what, count in answer["calls"].items():
                side.add(f"api:{what}", count)
            for name, seconds in answer["timings"].items():
                side.add(f"t:{name}", seconds)
            shown.append(f"{side.name} {answer['ready']:.2f} s")
        print(f"  stack start {i + 1}: " + " | ".join(shown), flush=True)
    for side in both:
        remote.check_others()
        answer = side.ask(op="kill", kills=args.kills)
        for key in ("kill", "start", "heal", "ping", "select"):
            side.add(key, *answer[key])
        for what, counts in answer["calls"].items():
            side.add(f"api:{what}", *counts)
        pairs = zip(answer["kill"], answer["start"], strict=True)
        print(
            f"  {side.name}: postgres kill() + start() " + ", ".join(fmt(a + b) for a, b in pairs),
            flush=True,
        )
    # the workers end (their Ryuk with them) before the pytest runs
    for side in both:
        if side.proc is not None:
            end_child(side.proc, interrupt=False)
    for side in both:
        remote.check_others()
        print(f"pytest run, {args.tests} tests, {side.name} engine ...", flush=True)
        run_pytest(side, args.tests)
        print(
            f"  done: aikernel_pg {fmt(median(side.values.get('aikernel_pg', [])))}, "
            f"the three fixtures {fmt(median(side.values.get('fixtures', [])))} (medians)",
            flush=True,
        )
    remote.check_others()


if __name__ == "__main__":
    sys.exit(main())
