"""Edges met in real use: proxies on CI, confluent-kafka callbacks, Postgres clone pool failures and
cleanup, Redis databases shared by concurrent test processes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_aikernel import KafkaService, PostgresService, RedisService, ServiceError
from pytest_aikernel.services import TestScope as Scope  # not "Test*": pytest would collect it
from pytest_aikernel.services import isolations
from pytest_aikernel.services.postgres import CATALOG, ClonePool
from pytest_aikernel.services.redis import ISOLATED_DBS, DbLease
from tests.proxytrap import ProxyTrap

# ---- proxies --------------------------------------------------------------------------------

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")


def test_stack_clients_ignore_proxy_settings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a CI runner behind a corporate proxy: every *_proxy variable set, no NO_PROXY."""
    trap = ProxyTrap()
    for name in PROXY_VARS:
        monkeypatch.setenv(name, trap.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    pytester.path.joinpath("seed.yaml").write_text("kv: {app/db: {user: app}}\n")
    pytester.makepyfile(
        """
import os
import pytest

@pytest.mark.aikernel_stack("vault", "elasticsearch", "prometheus", "jaeger")
def test_clients(aikernel_vault, aikernel_elasticsearch, aikernel_prometheus, aikernel_jaeger,
                 aikernel_vault_path, aikernel_es_index):
    assert os.environ["ALL_PROXY"].startswith("http://127.0.0.1:")
    assert "NO_PROXY" not in os.environ and "no_proxy" not in os.environ
    vault = aikernel_vault.client()
    read = vault.secrets.kv.v2.read_secret_version
    assert read(path="app/db", mount_point="secret", raise_on_deleted_version=True)[
        "data"]["data"] == {"user": "app"}
    entry = read(path="aikernel/elasticsearch", mount_point="secret",
                 raise_on_deleted_version=True)["data"]["data"]
    assert entry["port"] == aikernel_elasticsearch.port
    aikernel_vault_path.write("creds", user="u")
    assert aikernel_vault_path.read("creds") == {"user": "u"}

    assert aikernel_elasticsearch.info()["version"]["number"]
    for kwargs in ({}, {"node_class": "requests"}):
        with aikernel_elasticsearch.client(**kwargs) as es:
            index = aikernel_es_index.name("docs" + str(len(kwargs)))
            es.index(index=index, document={"a": 1}, refresh=True)
            assert es.count(index=index)["count"] == 1

    assert aikernel_prometheus.wait_for_target("prometheus", timeout=60)["health"] == "up"
    assert aikernel_prometheus.query("up")
    assert isinstance(aikernel_jaeger.services(), list)
"""
    )
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-rA", "--aikernel-vault-seed=seed.yaml", timeout=600
        )
    finally:
        trap.close()
    result.assert_outcomes(passed=1)
    assert trap.hits == 0, f"{trap.hits} connection(s) went to the proxy"


# ---- kafka: confluent-kafka's Python-side configuration keys --------------------------------


def test_kafka_callbacks_pass_through(
    aikernel_kafka: KafkaService, aikernel_kafka_topic, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    topic = aikernel_kafka_topic("callbacks")
    errors: list[object] = []
    delivered: list[tuple[object, str, bytes]] = []
    producer = aikernel_kafka.producer(
        on_delivery=lambda err, msg: delivered.append((err, msg.topic(), msg.value())),
        error_cb=errors.append,
        linger_ms=0,
    )
    producer.produce(topic, b"hello")
    assert producer.flush(30) == 0
    assert delivered == [(None, topic, b"hello")]

    commits: list[tuple[object, list[object]]] = []
    consumer = aikernel_kafka.consumer(
        f"{topic}.group",
        on_commit=lambda err, partitions: commits.append((err, partitions)),
        error_cb=errors.append,
        enable_auto_commit=False,
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        msg = None
        while msg is None or msg.error():
            assert time.monotonic() < deadline, "no message consumed"
            msg = consumer.poll(0.5)
        assert msg.value() == b"hello"
        consumer.commit(message=msg, asynchronous=True)
        while not commits:
            assert time.monotonic() < deadline, "on_commit was not called"
            consumer.poll(0.2)
        assert commits[0][0] is None
    finally:
        consumer.close()

    logger = logging.getLogger("tests.edges.kafka-admin")
    admin = aikernel_kafka.admin(error_cb=errors.append, logger=logger)
    assert topic in admin.list_topics(timeout=10).topics
    assert errors == []


# ---- postgres: the clone pool ---------------------------------------------------------------


def clones(pg: PostgresService, prefix: str) -> list[str]:
    with pg.connect("postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchall()
    return [r[0] for r in rows]


def wait_for_clones(pg: PostgresService, prefix: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(clones(pg, prefix)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} clones of {prefix}"
        time.sleep(0.05)


def terminate(pg: PostgresService, pool: ClonePool) -> None:
    """Terminate the pool's admin connection, as an admin or a failover would."""
    with pg.connect("postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (pool.application_name,),
        ).fetchall()
    assert rows == [(True,)]


def test_session_end_drops_every_clone_made_ahead(aikernel_postgres: PostgresService) -> None:
    worker = f"edge{secrets.token_hex(3)}"
    prefix = f"aik_{worker}_pg"
    _service, pg_isolation = isolations()["aikernel_pg"]
    _service, factory_isolation = isolations()["aikernel_pg_factory"]
    state: dict[str, object] = {}

    def scope() -> Scope:
        return Scope(
            name=f"aik_{worker}_{secrets.token_hex(3)}", worker=worker, worker_index=0, state=state
        )

    for _ in range(2):  # two tests, as pytest runs them
        with pg_isolation.make(aikernel_postgres, scope()) as conn:
            conn.execute("SELECT 1")
        with factory_isolation.make(aikernel_postgres, scope()) as make:
            make(CATALOG).close()
            make("aikernel_audit").close()
    # the session ends at once: the clones made ahead may still be in CREATE DATABASE
    state["pool"].close()  # type: ignore[attr-defined]
    assert clones(aikernel_postgres, prefix) == []  # made ahead, under a temporary name
    assert clones(aikernel_postgres, f"aik_{worker}_") == []  # renamed after their tests


def test_clone_pool_reconnects_after_its_connection_was_terminated(
    aikernel_postgres: PostgresService,
) -> None:
    prefix = f"aik_edge{secrets.token_hex(3)}_pg"
    pool = ClonePool(aikernel_postgres, prefix)
    try:
        first = pool.take(CATALOG)
        wait_for_clones(aikernel_postgres, prefix, 2)  # the next one, made ahead
        terminate(aikernel_postgres, pool)
        made = [pool.take(CATALOG) for _ in range(3)]  # each makes the next on a new connection
        assert len({first, *made}) == 4
        with aikernel_postgres.connect(made[-1]) as conn:
            assert conn.execute("SELECT count(*) FROM catalog.resources").fetchone() == (1,)
        for name in [first, *made]:
            pool.drop(name)
    finally:
        pool.close()
    assert clones(aikernel_postgres, prefix) == []


@pytest.fixture
def login_role(aikernel_postgres: PostgresService) -> Iterator[PostgresService]:
    """A role of its own that can clone templates: the test can take its login away."""
    role = f"aik_edge_{secrets.token_hex(3)}"
    with aikernel_postgres.connect("postgres", autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD 'edge-pw'")
    yield PostgresService(
        host=aikernel_postgres.host,
        port=aikernel_postgres.port,
        user=role,
        password="edge-pw",
        internal_host=aikernel_postgres.internal_host,
    )
    with aikernel_postgres.connect("postgres", autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON d.datdba = r.oid "
            "WHERE r.rolname = %s",
            (role,),
        ).fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f"DROP ROLE {role}")


def test_clone_pool_that_cannot_reconnect_says_so_and_recovers_later(
    aikernel_postgres: PostgresService, login_role: PostgresService
) -> None:
    prefix = f"aik_edge{secrets.token_hex(3)}_pg"
    pool = ClonePool(login_role, prefix)
    try:
        first = pool.take(CATALOG)
        pool.drop(first)
        deadline = time.monotonic() + 30
        while (found := clones(aikernel_postgres, prefix)) == [] or first in found:
            assert time.monotonic() < deadline, f"still {found}"
            time.sleep(0.05)
        # the pool is idle now: the next clone is made, the first one dropped
        with aikernel_postgres.connect("postgres", autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {login_role.user} NOLOGIN")
        terminate(aikernel_postgres, pool)
        pool.drop(pool.take(CATALOG))  # made ahead, before the connection went away
        began = time.monotonic()
        with pytest.raises(ServiceError) as info:
            pool.take(CATALOG)
        assert time.monotonic() - began < 15
        message = str(info.value)
        assert info.value.service == "postgres"
        assert message.startswith("postgres: no per-test clone (aikernel_pg, ")
        assert "the server closed the admin connection to" in message
        assert "terminating connection due to administrator command" in message
        assert f'role "{login_role.user}" is not permitted to log in' in message
        assert "Is the server still running?" in message
        # the server lets it in again: the next test gets its clone
        with aikernel_postgres.connect("postgres", autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {login_role.user} LOGIN")
        pool.drop(pool.take(CATALOG))
    finally:
        pool.close()
    assert clones(aikernel_postgres, prefix) == []


# ---- redis: one leased database per process -------------------------------------------------

HOLDER = """
import os, sys
from pytest_aikernel.services.redis import DbLease, RedisService

svc = RedisService(host=os.environ["EDGE_HOST"], port=int(os.environ["EDGE_PORT"]),
                   password=os.environ["EDGE_PASSWORD"], internal_host="redis")
lease = DbLease.acquire(svc)
print(lease.db, flush=True)
sys.stdin.read()
lease.close()
"""


def start_holder(redis_service: RedisService) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "EDGE_HOST": redis_service.host,
        "EDGE_PORT": str(redis_service.port),
        "EDGE_PASSWORD": redis_service.password,
    }
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes_lease_different_databases(aikernel_redis: RedisService) -> None:
    holders = [start_holder(aikernel_redis) for _ in range(4)]  # all prefer database 1
    try:
        dbs = [int(p.stdout.readline()) for p in holders]  # type: ignore[union-attr]
        assert len(set(dbs)) == 4, dbs
        assert all(1 <= db <= ISOLATED_DBS for db in dbs)
        killed = holders[0]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        # the killed holder's database is free again; the live holders' are not
        lease = DbLease.acquire(aikernel_redis, prefer=dbs[0])
        try:
            assert lease.db == dbs[0]
            other = DbLease.acquire(aikernel_redis, prefer=dbs[1])
            try:
                assert other.db not in dbs
            finally:
                other.close()
        finally:
            lease.close()
    finally:
        for p in holders:
            p.communicate(timeout=10)  # closes stdin: a live holder releases and exits
    assert [p.returncode for p in holders[1:]] == [0, 0, 0]


def test_all_databases_leased_is_a_clear_error(aikernel_redis: RedisService) -> None:
    leases: list[DbLease] = []
    try:
        while len(leases) < ISOLATED_DBS:  # whatever other processes hold is fine
            try:
                leases.append(DbLease.acquire(aikernel_redis))
            except ServiceError:
                break
        with pytest.raises(ServiceError) as info:
            DbLease.acquire(aikernel_redis)
        message = str(info.value)
        assert message.startswith(f"redis: all {ISOLATED_DBS} per-test databases (1-15) of ")
        assert "are in use" in message
        assert "Run fewer concurrent sessions or xdist workers" in message
    finally:
        for lease in leases:
            lease.close()
    DbLease.acquire(aikernel_redis).close()  # released: free again


SHARED_TEST = """
import os, pathlib, time

def wait_for(path):
    deadline = time.monotonic() + 120
    while not pathlib.Path(path).exists():
        assert time.monotonic() < deadline, f"the other session did not write {path}"
        time.sleep(0.05)

def test_own_database(aikernel_redis_db):
    me, other = os.environ["EDGE_ME"], os.environ["EDGE_OTHER"]
    db = aikernel_redis_db.connection_pool.connection_kwargs["db"]
    aikernel_redis_db.set("owner", me)
    pathlib.Path(f"ready-{me}").write_text(str(db))
    wait_for(f"ready-{other}")
    time.sleep(0.2)
    assert aikernel_redis_db.get("owner") == me.encode()
    assert aikernel_redis_db.dbsize() == 1
    pathlib.Path(f"checked-{me}").write_text("")
    wait_for(f"checked-{other}")  # the teardown flush must not come before the other's check
"""


def test_concurrent_external_sessions_never_share_a_database(
    pytester: pytest.Pytester, aikernel_redis: RedisService
) -> None:
    """Two CI jobs pointed at one Redis (external mode), running at the same time."""
    pytester.makepyfile(test_shared=SHARED_TEST)
    procs = []
    for me, other in (("a", "b"), ("b", "a")):
        env = {
            **os.environ,
            "AIKERNEL_MODE": "external",
            "AIKERNEL_REDIS_URL": aikernel_redis.url,
            "EDGE_ME": me,
            "EDGE_OTHER": other,
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "-q",
                    f"--basetemp={pytester.path / ('tmp-' + me)}",
                    "test_shared.py",
                ],
                cwd=pytester.path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
    dbs = {Path(pytester.path / f"ready-{me}").read_text() for me in "ab"}
    assert len(dbs) == 2, dbs
    with aikernel_redis.client() as client:  # both released their lease at session end
        assert [
            k
            for k in client.keys("aikernel:redis-db-lease:*")
            if k.decode().rsplit(":", 1)[-1] in dbs
        ] == []


def test_redis_db_fixture_is_still_a_client(aikernel_redis_db) -> None:
    import redis

    assert isinstance(aikernel_redis_db, redis.Redis)
    assert aikernel_redis_db.dbsize() == 0
    aikernel_redis_db.set("k", "v")
