"""Faults on demand: services stopped, killed, paused, cut off and failed over by a test, through
the real clients, and healed by the plugin before the next test.

The first tests fault the session's own stack (the plugin heals it after each of them); the
others run whole pytest sessions in subprocesses (pytester) to see what the next test, the next
xdist worker or the next process finds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import hvac
import psycopg
import pytest
import redis

from pytest_aikernel.errors import FaultError

from .conftest import containers_of, read_kv
from .test_lifecycle import RECORD as LIFECYCLE_RECORD

T = TypeVar("T")


def poll(what: str, probe: Callable[[], T], ok: Callable[[T], bool], timeout: float) -> T:
    """Call ``probe`` until ``ok(result)``; AssertionError naming ``what`` and the last result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: Any = probe()
        except Exception as exc:  # a client error while the service comes and goes
            last = exc
        else:
            if ok(last):
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(0.1)


def container(client: docker.DockerClient, stack: Any, service: str) -> dict[str, Any]:
    """What the engine says now about ``service``'s container: its id, status, published ports
    ({container port: host port}) and aliases on the stack network."""
    raw = client.containers.get(stack.runtime.container_name(service))
    settings = raw.attrs["NetworkSettings"]
    network = (settings.get("Networks") or {}).get(stack.runtime.network_name) or {}
    return {
        "id": raw.id,
        "status": raw.status,
        "ports": {
            int(port.split("/")[0]): int(bindings[0]["HostPort"])
            for port, bindings in (settings["Ports"] or {}).items()
            if bindings
        },
        "aliases": set(network.get("Aliases") or ()),
    }


def wal_receiver(replica: Any) -> tuple[bool, str | None]:
    """(pg_is_in_recovery(), the WAL receiver's status or None) of the postgres replica."""
    with replica.connect("postgres", autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)"
        ).fetchone()
    assert row is not None
    return bool(row[0]), row[1]


def link_status(replica: Any) -> tuple[str, str | None]:
    """(role, master_link_status) of the redis replica."""
    with replica.client(socket_timeout=3) as client:
        info = client.info("replication")
    return str(info.get("role")), info.get("master_link_status")


# ---- a crash keeps the data, the port and the address --------------------------------------------


@pytest.mark.aikernel_stack("postgres")
def test_postgres_committed_row_survives_kill_and_start(
    aikernel_stack, aikernel_postgres, docker_api: docker.DockerClient
) -> None:
    table = f"catalog.fault_kill_{uuid.uuid4().hex[:8]}"
    with aikernel_postgres.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        conn.execute(f"INSERT INTO {table} VALUES ('committed before the crash')")
    before = container(docker_api, aikernel_stack, "postgres")
    assert before["ports"][5432] == aikernel_postgres.port
    assert "postgres" in before["aliases"]

    aikernel_postgres.kill()
    assert container(docker_api, aikernel_stack, "postgres")["status"] == "exited"
    with pytest.raises(psycopg.OperationalError):
        aikernel_postgres.connect(connect_timeout=2).close()

    aikernel_postgres.start()
    after = container(docker_api, aikernel_stack, "postgres")
    assert after["status"] == "running"
    assert after["id"] == before["id"], "the same container, started again"
    assert after["ports"] == before["ports"], "the same host port"
    assert "postgres" in after["aliases"], "the same network alias"
    with aikernel_postgres.connect() as conn:
        assert conn.execute(f"SELECT v FROM {table}").fetchall() == [
            ("committed before the crash",)
        ]
        conn.execute(f"DROP TABLE {table}")


# ---- the same for Neo4j, Elasticsearch and Kafka -------------------------------------------------


@pytest.mark.aikernel_stack("neo4j")
def test_neo4j_node_survives_kill_and_start(
    aikernel_stack, aikernel_neo4j, docker_api: docker.DockerClient
) -> None:
    mark = uuid.uuid4().hex
    with aikernel_neo4j.driver() as driver:
        driver.execute_query("CREATE (:FaultProbe {mark: $mark})", mark=mark)
    aikernel_neo4j.kill()
    assert container(docker_api, aikernel_stack, "neo4j")["status"] == "exited"
    aikernel_neo4j.start()
    with aikernel_neo4j.driver() as driver:
        records, _, _ = driver.execute_query(
            "MATCH (n:FaultProbe {mark: $mark}) RETURN count(n) AS c", mark=mark
        )
        assert records[0]["c"] == 1
        driver.execute_query("MATCH (n:FaultProbe {mark: $mark}) DELETE n", mark=mark)


@pytest.mark.aikernel_stack("elasticsearch")
def test_elasticsearch_document_survives_kill_and_start(
    aikernel_stack, aikernel_elasticsearch, aikernel_es_index, docker_api: docker.DockerClient
) -> None:
    index = aikernel_es_index.name("docs")
    with aikernel_elasticsearch.client() as es:
        es.index(index=index, id="kept", document={"v": "indexed before the crash"})
    aikernel_elasticsearch.refresh(index)
    aikernel_elasticsearch.kill()
    assert container(docker_api, aikernel_stack, "elasticsearch")["status"] == "exited"
    aikernel_elasticsearch.start()
    with aikernel_elasticsearch.client() as es:
        assert es.get(index=index, id="kept")["_source"] == {"v": "indexed before the crash"}
        assert es.count(index=index)["count"] == 1


@pytest.mark.aikernel_stack("kafka")
def test_kafka_message_survives_kill_and_start(
    aikernel_stack, aikernel_kafka, aikernel_kafka_topic, docker_api: docker.DockerClient
) -> None:
    from confluent_kafka import TopicPartition

    topic = aikernel_kafka_topic("survivor")
    producer = aikernel_kafka.producer()
    producer.produce(topic, value=b"sent before the crash", key=b"k")
    assert producer.flush(10) == 0, "the message was delivered"

    aikernel_kafka.kill()
    assert container(docker_api, aikernel_stack, "kafka")["status"] == "exited"
    aikernel_kafka.start()

    consumer = aikernel_kafka.consumer(f"faults-{uuid.uuid4().hex[:8]}", enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        msg = poll(
            f"a message at offset 0 of {topic}",
            lambda: consumer.poll(1.0),
            lambda m: m is not None and m.error() is None,
            timeout=30,
        )
    finally:
        consumer.close()
    assert (msg.offset(), msg.key(), msg.value()) == (0, b"k", b"sent before the crash")


# ---- down(): refused inside the block, back after it ---------------------------------------------


def test_redis_down_refuses_inside_the_block_and_pings_after(aikernel_redis) -> None:
    client = aikernel_redis.client(socket_connect_timeout=2)
    assert client.ping()
    with aikernel_redis.down(), pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    assert client.ping()
    with aikernel_redis.client() as fresh:
        assert fresh.ping()
    client.close()


# ---- paused(): a connection hangs (not refused) until unpaused -----------------------------------


def test_paused_postgres_hangs_connections_until_unpaused(aikernel_postgres) -> None:
    with aikernel_postgres.paused():
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            aikernel_postgres.connect(connect_timeout=1).close()
        elapsed = time.monotonic() - began
        assert elapsed >= 0.9, f"refused after {elapsed:.2f} s: a paused server hangs"
        assert elapsed < 10, f"connect_timeout ended the attempt (took {elapsed:.2f} s)"
    with aikernel_postgres.connect(connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---- Vault in dev mode: its entries and seed come back after a restart ---------------------------


@pytest.mark.aikernel_stack("postgres", "redis", "vault")
def test_vault_entries_and_seed_are_written_again_after_restart(
    aikernel_vault, aikernel_postgres, aikernel_redis
) -> None:
    scratch = f"faults/{uuid.uuid4().hex[:8]}"
    aikernel_vault.client().secrets.kv.v2.create_or_update_secret(
        path=scratch, secret={"a": "1"}, mount_point="secret"
    )
    before = read_kv(aikernel_vault, "aikernel/postgres")

    aikernel_vault.restart()

    client = aikernel_vault.client()
    assert client.sys.read_health_status(method="GET")["sealed"] is False
    # a dev-mode Vault keeps nothing: what the plugin did not write is gone
    with pytest.raises(hvac.exceptions.InvalidPath):
        read_kv(aikernel_vault, scratch)
    assert read_kv(aikernel_vault, "aikernel/postgres") == before
    assert read_kv(aikernel_vault, "aikernel/postgres")["password"] == aikernel_postgres.password
    assert read_kv(aikernel_vault, "aikernel/redis")["port"] == aikernel_redis.port
    assert read_kv(aikernel_vault, "aikernel/api") == {"signing_key": "abc"}  # the seed file


# ---- promote(): a writable primary for the test, a replica again after it ------------------------


def test_promoted_postgres_replica_takes_writes(
    aikernel_postgres, aikernel_postgres_replica
) -> None:
    with pytest.raises(FaultError, match=r"aikernel_postgres\.promote\(\).*not a replica"):
        aikernel_postgres.promote()
    aikernel_postgres_replica.promote()
    with aikernel_postgres_replica.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        conn.execute("CREATE TABLE catalog.fault_promoted (v int)")
        conn.execute("INSERT INTO catalog.fault_promoted VALUES (7)")
    with aikernel_postgres_replica.connect() as conn:
        assert conn.execute("SELECT v FROM catalog.fault_promoted").fetchall() == [(7,)]
    with pytest.raises(FaultError, match=r"aikernel_postgres_replica\.promote\(\)"):
        aikernel_postgres_replica.promote()


def test_promoted_redis_replica_takes_writes(aikernel_redis, aikernel_redis_replica) -> None:
    with pytest.raises(FaultError, match=r"aikernel_redis\.promote\(\).*not a replica"):
        aikernel_redis.promote()
    aikernel_redis_replica.promote()
    with aikernel_redis_replica.client() as client:
        assert client.info("replication")["role"] == "master"
        assert client.set("faults:promoted", "written on the promoted replica")
        assert client.get("faults:promoted") == b"written on the promoted replica"
    with pytest.raises(FaultError, match=r"aikernel_redis_replica\.promote\(\)"):
        aikernel_redis_replica.promote()


# ---- disconnect(): the replicas lose their primary, and find it again ----------------------------


@pytest.mark.aikernel_stack("postgres", "postgres-replica")
def test_partitioned_postgres_primary_stops_and_resumes_streaming(
    aikernel_stack, aikernel_postgres, aikernel_postgres_replica, docker_api: docker.DockerClient
) -> None:
    assert wal_receiver(aikernel_postgres_replica) == (True, "streaming")
    before = container(docker_api, aikernel_stack, "postgres")
    with aikernel_postgres.partitioned():
        assert container(docker_api, aikernel_stack, "postgres")["aliases"] == set()
        poll(
            "the replica's WAL receiver stops streaming",
            lambda: wal_receiver(aikernel_postgres_replica),
            lambda r: r[1] != "streaming",
            timeout=15,
        )
    poll(
        "the replica streams again",
        lambda: wal_receiver(aikernel_postgres_replica),
        lambda r: r == (True, "streaming"),
        timeout=30,
    )
    after = container(docker_api, aikernel_stack, "postgres")
    assert (after["ports"], "postgres" in after["aliases"]) == (before["ports"], True)
    with aikernel_postgres.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS catalog.fault_partition (v int)")
        conn.execute("INSERT INTO catalog.fault_partition VALUES (1)")
    aikernel_postgres_replica.wait_for_replication(timeout=20)
    with aikernel_postgres_replica.connect() as conn:
        assert (1,) in conn.execute("SELECT v FROM catalog.fault_partition").fetchall()


def test_disconnected_redis_master_takes_the_replica_link_down_until_reconnect(
    aikernel_redis, aikernel_redis_replica
) -> None:
    assert link_status(aikernel_redis_replica) == ("slave", "up")
    aikernel_redis.disconnect()
    poll(
        "the replica's master link goes down",
        lambda: link_status(aikernel_redis_replica),
        lambda r: r[1] == "down",
        timeout=15,
    )
    aikernel_redis.reconnect()
    poll(
        "the replica's master link is up again",
        lambda: link_status(aikernel_redis_replica),
        lambda r: r == ("slave", "up"),
        timeout=30,
    )
    with aikernel_redis.client() as master:
        master.set("faults:after-partition", "x")
    aikernel_redis_replica.wait_for_replication(timeout=20)
    with aikernel_redis_replica.client() as replica:
        assert replica.get("faults:after-partition") == b"x"


# ---- bad input -----------------------------------------------------------------------------------


def test_bad_fault_arguments_raise_fault_error_and_change_nothing(aikernel_redis) -> None:
    with pytest.raises(FaultError, match=r"aikernel_redis\.kill\(\).*'NOPE'"):
        aikernel_redis.kill(signal="NOPE")
    with pytest.raises(FaultError, match=r"aikernel_redis\.stop\(\).*timeout"):
        aikernel_redis.stop(timeout=-1)
    with pytest.raises(FaultError, match=r"aikernel_redis\.restart\(\).*timeout"):
        aikernel_redis.restart(timeout=-1)
    with aikernel_redis.client() as client:
        assert client.ping()


# ---- inner runs ----------------------------------------------------------------------------------

RECORD = (
    LIFECYCLE_RECORD
    + """
def read_kv(vault, path):
    return vault.client().secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True)["data"]["data"]
"""
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The inner runs' environment: a private cache folder (reused stacks), an out folder."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("AIKTEST_OUT", str(out))
    monkeypatch.setenv("RYUK_RECONNECTION_TIMEOUT", "2s")
    monkeypatch.delenv("AIKERNEL_FAULT_WAIT", raising=False)
    yield out
    # a reused stack of an inner run is this test's own (private cache folder)
    subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", "down"],
        env=dict(os.environ),
        capture_output=True,
        timeout=300,
        check=False,
    )


def run(pytester: pytest.Pytester, *args: str, timeout: float = 300) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=timeout)


def section(text: str, title: str) -> str:
    """The text of one report section (``_____ title _____`` up to the next one)."""
    match = re.search(rf"_+ {re.escape(title)} _+\n(.*?)(?=\n_{{5,}} |\n={{5,}} )", text, re.S)
    assert match is not None, f"no section {title!r} in:\n{text}"
    return match.group(1)


# ---- a promoted replica is a replica of the primary again in the next test -----------------------

PROMOTED_NEXT = """
import pytest

def test_1_promote_postgres(aikernel_postgres_replica):
    aikernel_postgres_replica.promote()
    with aikernel_postgres_replica.connect() as conn:
        conn.execute("CREATE TABLE catalog.only_on_promoted (v int)")

def test_2_postgres_replica_again(aikernel_postgres, aikernel_postgres_replica):
    with aikernel_postgres_replica.connect("postgres") as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)"
        ).fetchone()
    assert row == (True, "streaming")
    with aikernel_postgres.connect() as conn:
        conn.execute("CREATE TABLE catalog.from_primary (v int)")
        conn.execute("INSERT INTO catalog.from_primary VALUES (42)")
    aikernel_postgres_replica.wait_for_replication(timeout=20)
    with aikernel_postgres_replica.connect() as conn:
        assert conn.execute("SELECT v FROM catalog.from_primary").fetchall() == [(42,)]
        assert conn.execute("SELECT to_regclass('catalog.only_on_promoted')").fetchone() == (None,)

def test_3_promote_redis(aikernel_redis_replica):
    aikernel_redis_replica.promote()
    with aikernel_redis_replica.client() as client:
        client.set("only-on-promoted", "x")

def test_4_redis_replica_again(aikernel_redis, aikernel_redis_replica):
    with aikernel_redis_replica.client() as replica:
        info = replica.info("replication")
        assert (info["role"], info["master_link_status"]) == ("slave", "up")
        with aikernel_redis.client() as master:
            master.set("from-master", "42")
        aikernel_redis_replica.wait_for_replication(timeout=20)
        assert replica.get("from-master") == b"42"
        assert replica.get("only-on-promoted") is None
"""


def test_promoted_replicas_are_replicas_again_in_the_next_test(
    pytester: pytest.Pytester, env: Path
) -> None:
    pytester.makepyfile(test_promoted=PROMOTED_NEXT)
    result = run(pytester)
    result.assert_outcomes(passed=4)


# ---- a test that leaves every fault in place: the next one finds a healthy stack -----------------

LEAVE_ALL = """
import pytest
from helper import read_kv

SERVICES = ("postgres", "postgres-replica", "redis", "redis-replica", "vault")

@pytest.mark.aikernel_stack(*SERVICES)
def test_1_leaves_every_fault(aikernel_postgres, aikernel_postgres_replica, aikernel_redis,
                              aikernel_redis_replica, aikernel_vault):
    aikernel_redis_replica.promote()
    aikernel_postgres_replica.disconnect()
    aikernel_redis.pause()
    aikernel_postgres.kill()
    aikernel_vault.stop()

@pytest.mark.aikernel_stack(*SERVICES)
def test_2_finds_every_service_healthy(aikernel_postgres, aikernel_postgres_replica,
                                       aikernel_redis, aikernel_redis_replica, aikernel_vault):
    with aikernel_postgres.connect(connect_timeout=3) as conn:
        conn.execute("CREATE TABLE catalog.after_faults (v int)")
        conn.execute("INSERT INTO catalog.after_faults VALUES (1)")
    with aikernel_postgres_replica.connect("postgres", connect_timeout=3) as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1)"
        ).fetchone()
    assert row == (True, "streaming")
    aikernel_postgres_replica.wait_for_replication(timeout=20)
    with aikernel_postgres_replica.connect(connect_timeout=3) as conn:
        assert conn.execute("SELECT v FROM catalog.after_faults").fetchall() == [(1,)]

    with aikernel_redis.client(socket_timeout=3) as master:
        assert master.ping()
        master.set("after-faults", "1")
    with aikernel_redis_replica.client(socket_timeout=3) as replica:
        info = replica.info("replication")
        assert (info["role"], info["master_link_status"]) == ("slave", "up")
        aikernel_redis_replica.wait_for_replication(timeout=20)
        assert replica.get("after-faults") == b"1"

    assert aikernel_vault.client(timeout=3).sys.read_health_status(method="GET")["sealed"] is False
    assert read_kv(aikernel_vault, "aikernel/postgres")["password"] == aikernel_postgres.password
    assert read_kv(aikernel_vault, "aikernel/redis-replica")["port"] == aikernel_redis_replica.port
"""


def test_every_fault_left_by_a_test_is_healed_before_the_next(
    pytester: pytest.Pytester, env: Path
) -> None:
    pytester.makepyfile(helper=RECORD, test_leave=LEAVE_ALL)
    # the heals take seconds; a bounded startup timeout keeps a heal that hangs short
    result = run(pytester, "--aikernel-startup-timeout=30")
    result.assert_outcomes(passed=2)


# ---- a heal that cannot work: the culprit's teardown and the next test say so --------------------

UNHEALABLE = """
import docker
import pytest

@pytest.mark.aikernel_stack("redis")
def test_1_removes_redis(aikernel_stack, aikernel_redis):
    aikernel_redis.stop()
    client = docker.from_env()
    client.containers.get(aikernel_stack.runtime.container_name("redis")).remove(
        force=True, v=True
    )
    client.close()

def test_2_needs_redis(aikernel_redis):
    assert aikernel_redis.client().ping()
"""


def test_a_failed_heal_errors_the_culprit_and_names_it_to_the_next_test(
    pytester: pytest.Pytester, env: Path
) -> None:
    pytester.makepyfile(test_unhealable=UNHEALABLE)
    began = time.monotonic()
    result = run(pytester, timeout=180)
    elapsed = time.monotonic() - began
    result.assert_outcomes(passed=1, errors=2)
    text = result.stdout.str()
    culprit = "test_unhealable.py::test_1_removes_redis"
    teardown = section(text, "ERROR at teardown of test_1_removes_redis")
    assert "redis" in teardown and "could not be healed" in teardown, teardown
    setup = section(text, "ERROR at setup of test_2_needs_redis")
    assert "redis" in setup and culprit in setup, setup
    assert elapsed < 120, f"the inner run took {elapsed:.0f} s"


# ---- xdist: a fault takes the service from the other workers' tests ------------------------------

HOLDER = """
import time
from helper import record, wait_for

def test_holder(aikernel_postgres, worker_id):
    record("holder-worker", worker_id)
    wait_for("others-started")
    aikernel_postgres.stop()
    record("down-start", time.time())
    time.sleep(3)
    record("down-end", time.time())
"""

#: tests of the other worker: ones that need postgres, each followed by one that needs nothing
#: (the holder takes postgres between two tests that use it)
OTHER_PG = """
def test_{i:02d}_postgres(aikernel_postgres, worker_id):
    began = time.time()
    record("others-started", worker_id)
    with aikernel_postgres.connect(connect_timeout=3) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    time.sleep(0.2)
    record("body-{i}", f"{{began}} {{time.time()}}")

def test_{i:02d}_gap():
    time.sleep(0.1)
"""

OTHERS = 8


def test_xdist_tests_needing_a_faulted_service_wait_until_it_is_healed(
    pytester: pytest.Pytester, env: Path
) -> None:
    others = "import time\nfrom helper import record\n" + "".join(
        OTHER_PG.format(i=i) for i in range(OTHERS)
    )
    pytester.makepyfile(helper=RECORD, test_holder=HOLDER, test_others=others)
    result = run(pytester, "-n", "2", "--dist", "loadfile")
    result.assert_outcomes(passed=1 + 2 * OTHERS)
    holder = (env / "holder-worker").read_text()
    assert (env / "others-started").read_text() != holder, "the tests ran on both workers"
    down = (float((env / "down-start").read_text()), float((env / "down-end").read_text()))
    bodies = sorted(
        tuple(float(x) for x in (env / f"body-{i}").read_text().split()) for i in range(OTHERS)
    )
    during = [b for b in bodies if b[0] < down[1] and b[1] > down[0]]
    assert not during, f"ran while postgres was down {down}: {during}"
    # some ran before the fault, some waited for the heal
    assert bodies[0][0] < down[0] < down[1] < bodies[-1][0], (down, bodies)


HOLDER_LONG = """
import time
import pytest
from helper import record, wait_for

def test_holder(aikernel_postgres, worker_id):
    record("holder-worker", worker_id)
    wait_for("other-ready")
    aikernel_postgres.stop()
    record("down-start", time.time())
    time.sleep(8)
"""

IMPATIENT = """
import pytest
from helper import record, wait_for

def test_a_waits_for_the_fault(worker_id):
    record("other-ready", worker_id)
    wait_for("down-start")

def test_b_needs_postgres(aikernel_postgres):
    with aikernel_postgres.connect() as conn:
        conn.execute("SELECT 1")
"""


def test_xdist_fault_wait_timeout_names_the_holder(pytester: pytest.Pytester, env: Path) -> None:
    pytester.makepyfile(helper=RECORD, test_holder=HOLDER_LONG, test_impatient=IMPATIENT)
    result = run(pytester, "-n", "2", "--dist", "loadfile", "--aikernel-fault-wait", "1")
    result.assert_outcomes(passed=2, errors=1)
    assert (env / "other-ready").read_text() != (env / "holder-worker").read_text()
    setup = section(result.stdout.str(), "ERROR at setup of test_b_needs_postgres")
    assert "waited" in setup and "test_holder.py::test_holder" in setup, setup


# ---- reuse: a process killed in the middle of a fault; the next one heals it ---------------------

DIES = """
import os, signal
import pytest
from helper import record

@pytest.mark.aikernel_stack("redis")
def test_dies_in_the_middle_of_a_fault(aikernel_stack, aikernel_redis):
    record("first", aikernel_stack.running("redis").container_id)
    getattr(aikernel_redis, os.environ["AIKTEST_FAULT"])()
    os.kill(os.getpid(), signal.SIGKILL)
"""

AFTER = """
import pytest
from helper import record

@pytest.mark.aikernel_stack("redis")
def test_pings(aikernel_stack, aikernel_redis):
    record("second", aikernel_stack.running("redis").container_id)
    record("session", aikernel_stack.session_id)
    with aikernel_redis.client(socket_timeout=5) as client:
        assert client.ping()
        assert client.set("after-the-kill", "1")
"""


@pytest.mark.parametrize("fault", ["stop", "pause"])
def test_reuse_heals_the_fault_of_a_killed_process(
    pytester: pytest.Pytester,
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_api: docker.DockerClient,
    fault: str,
) -> None:
    monkeypatch.setenv("AIKTEST_FAULT", fault)
    pytester.makepyfile(helper=RECORD, test_dies=DIES, test_after=AFTER)
    first = run(pytester, "--aikernel-reuse", "test_dies.py")
    assert first.ret == -signal.SIGKILL, first.stdout.str()
    cache = Path(os.environ["XDG_CACHE_HOME"])
    assert [p.name for p in cache.rglob("redis.fault")] == ["redis.fault"], "the marker"
    second = run(pytester, "--aikernel-reuse", "test_after.py")
    second.assert_outcomes(passed=1)
    assert not list(cache.rglob("*.fault")), "healed: no fault marker left"
    if fault == "pause":  # a paused container is still there: healed, not replaced
        assert (env / "second").read_text() == (env / "first").read_text()
    # the reused stack is this test's own (private cache folder): `aikernel down` removes it
    down = pytester.run(sys.executable, "-m", "pytest_aikernel", "down", timeout=120)
    assert down.ret == 0, down.stderr.str()
    assert containers_of(docker_api, (env / "session").read_text()) == {}
