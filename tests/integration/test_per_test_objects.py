"""The service under test: every per-test object tells where its resource is, in one name per test.

Each address is checked with the client library a service under test would use (psycopg, redis,
confluent-kafka, elasticsearch-py, hvac, the neo4j driver): it must reach this test's own database,
keys, topic, index, secrets and graph.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import elasticsearch
import hvac
import neo4j
import psycopg
import pytest
import redis
from confluent_kafka.admin import AdminClient

from pytest_aikernel import (
    CloneConnection,
    CloneFactory,
    ElasticsearchService,
    IndexPrefix,
    KafkaService,
    PostgresService,
    RedisDb,
    RollbackSession,
    SeedError,
    ServiceError,
    TopicFactory,
    VaultPath,
    WaitTimeout,
    _http,
)

STEM = re.compile(r"^aik_(main|gw[0-9]+)_[0-9]+_[0-9a-f]{8}$")
STEMS: list[str] = []


@pytest.mark.parametrize("attempt", [1, 2])
def test_one_name_per_test_across_services(
    aikernel_pg: CloneConnection,
    aikernel_pg_audit: CloneConnection,
    aikernel_pg_factory: CloneFactory,
    aikernel_redis_db: RedisDb,
    aikernel_kafka_topic: TopicFactory,
    aikernel_es_index: IndexPrefix,
    aikernel_vault_path: VaultPath,
    aikernel_neo4j_session: RollbackSession,
    attempt: int,
) -> None:
    stem = aikernel_pg.scope_name
    assert STEM.match(stem), stem
    assert len(stem) <= 40, "room for suffixes within Postgres' 63-byte names"
    for obj in (
        aikernel_pg_audit,
        aikernel_pg_factory,
        aikernel_redis_db,
        aikernel_kafka_topic,
        aikernel_es_index,
        aikernel_vault_path,
        aikernel_neo4j_session,
    ):
        assert obj.scope_name == stem, type(obj).__name__
    assert aikernel_pg.database == stem
    assert aikernel_pg.info.dbname == stem
    assert aikernel_pg_audit.database == f"{stem}_audit"
    first = aikernel_pg_factory()
    second = aikernel_pg_factory("aikernel_audit")
    assert (first.database, second.database) == (f"{stem}_1", f"{stem}_2")
    assert aikernel_pg_factory.databases == [f"{stem}_1", f"{stem}_2"]
    assert second.execute("SELECT current_database()").fetchone() == (f"{stem}_2",)
    assert 1 <= aikernel_redis_db.db <= 15
    assert aikernel_kafka_topic.prefix == f"{stem}."
    assert aikernel_kafka_topic.name("events") == f"{stem}.events"
    assert aikernel_es_index.prefix == f"{stem}-"
    assert aikernel_vault_path.prefix == f"tests/{stem}"
    assert stem not in STEMS, "each test has its own name"
    STEMS.append(stem)


def test_the_objects_keep_their_client_types(
    aikernel_pg: CloneConnection, aikernel_pg_factory: CloneFactory, aikernel_redis_db: RedisDb
) -> None:
    assert isinstance(aikernel_pg, psycopg.Connection)
    assert isinstance(aikernel_pg, CloneConnection)
    assert isinstance(aikernel_pg_factory(), CloneConnection)
    assert isinstance(aikernel_redis_db, redis.Redis)
    assert isinstance(aikernel_redis_db, RedisDb)
    assert aikernel_redis_db.connection_pool.connection_kwargs["db"] == aikernel_redis_db.db


# ---- postgres --------------------------------------------------------------------------------


def test_pg_dsn_reaches_the_clone(
    aikernel_pg: CloneConnection, aikernel_postgres: PostgresService
) -> None:
    aikernel_pg.execute("CREATE TABLE catalog.mine (v int)")
    aikernel_pg.execute("INSERT INTO catalog.mine VALUES (7)")
    aikernel_pg.commit()
    assert aikernel_pg.url == aikernel_pg.dsn()
    with psycopg.connect(aikernel_pg.dsn()) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (aikernel_pg.database,)
        assert conn.execute("SELECT v FROM catalog.mine").fetchall() == [(7,)]
    internal = urlsplit(aikernel_pg.internal_dsn())
    assert (internal.hostname, internal.port) == ("postgres", 5432)
    assert internal.path == f"/{aikernel_pg.database}"
    assert internal.password == aikernel_postgres.password
    assert aikernel_pg.internal_dsn() == aikernel_postgres.internal_dsn(aikernel_pg.database)


def test_pg_audit_dsn_reaches_the_audit_clone(aikernel_pg_audit: CloneConnection) -> None:
    with psycopg.connect(aikernel_pg_audit.dsn()) as conn:
        assert conn.execute("SELECT kind FROM audit.events").fetchall() == [("seeded",)]
        assert conn.execute("SELECT current_database()").fetchone() == (aikernel_pg_audit.database,)


def test_pg_factory_addresses(aikernel_pg_factory: CloneFactory) -> None:
    conn = aikernel_pg_factory(autocommit=True)
    assert conn.autocommit, "keyword arguments still go to psycopg"
    assert aikernel_pg_factory.dsn(conn.database) == conn.dsn()
    assert aikernel_pg_factory.internal_dsn(conn.database) == conn.internal_dsn()


def test_pg_factory_loads_sql_files(aikernel_pg_factory: CloneFactory, tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text(
        "-- the service's own schema\n"
        "CREATE TABLE catalog.orders (id int PRIMARY KEY, note text);\n"
        "CREATE FUNCTION catalog.twice(x int) RETURNS int AS $$ SELECT x * 2; $$ LANGUAGE sql;\n"
    )
    rows = tmp_path / "rows.sql"
    rows.write_text("INSERT INTO catalog.orders VALUES (1, 'a; b'), (2, 'it''s');\n")
    conn = aikernel_pg_factory(load=[schema, str(rows)])
    assert conn.execute("SELECT id, note FROM catalog.orders ORDER BY id").fetchall() == [
        (1, "a; b"),
        (2, "it's"),
    ]
    assert conn.execute("SELECT catalog.twice(21)").fetchone() == (42,)
    # the seeded data is there too, and other clones do not have the loaded schema
    assert conn.execute("SELECT count(*) FROM catalog.resources").fetchone() == (1,)
    plain = aikernel_pg_factory()
    assert plain.execute("SELECT to_regclass('catalog.orders')").fetchone() == (None,)


def test_pg_factory_names_the_bad_line_of_a_load_file(
    aikernel_pg_factory: CloneFactory, aikernel_postgres: PostgresService, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.sql"
    bad.write_text(
        "CREATE TABLE catalog.ok (v int);\n\nINSERT INTO catalog.ok\n  VALUES (1), ('x');\n"
    )
    stem = aikernel_pg_factory.scope_name
    with pytest.raises(SeedError) as info:
        aikernel_pg_factory(load=[bad])
    message = str(info.value)
    assert message.startswith(f"postgres: load file {bad} failed in database '{stem}_1': ")
    assert "statement at line 4 (statement starts at line 3)" in message
    assert 'invalid input syntax for type integer: "x"' in message
    with pytest.raises(SeedError, match=r"cannot read load file \S*missing\.sql"):
        aikernel_pg_factory(load=[tmp_path / "missing.sql"])
    with pytest.raises(TypeError, match="a list of SQL files"):
        aikernel_pg_factory(load=str(bad))  # type: ignore[arg-type]
    # the failed clone is dropped; the next call has its own name
    assert aikernel_pg_factory().database == f"{stem}_4"
    deadline = time.monotonic() + 10
    while f"{stem}_1" in databases(aikernel_postgres):
        assert time.monotonic() < deadline, "the clone of the failed load was not dropped"
        time.sleep(0.05)


def databases(pg: PostgresService) -> set[str]:
    with pg.connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


# ---- redis -----------------------------------------------------------------------------------


def test_redis_url_reaches_the_same_database(aikernel_redis_db: RedisDb) -> None:
    aikernel_redis_db.set("order:1", "new")
    with redis.from_url(aikernel_redis_db.url) as other:
        assert other.get("order:1") == b"new"
        other.set("order:2", "paid")
    assert aikernel_redis_db.get("order:2") == b"paid"
    internal = urlsplit(aikernel_redis_db.internal_url)
    assert (internal.hostname, internal.port) == ("redis", 6379)
    assert internal.path == f"/{aikernel_redis_db.db}"


# ---- kafka -----------------------------------------------------------------------------------


def test_kafka_topic_addresses(aikernel_kafka_topic: TopicFactory) -> None:
    topic = aikernel_kafka_topic("orders", partitions=2)
    assert topic == aikernel_kafka_topic.name("orders")
    assert aikernel_kafka_topic.topics == [topic]
    admin = AdminClient({"bootstrap.servers": aikernel_kafka_topic.bootstrap_servers})
    listed = admin.list_topics(timeout=10).topics
    assert len(listed[topic].partitions) == 2
    assert aikernel_kafka_topic.internal_bootstrap_servers == "kafka:9092"


def test_kafka_produce_and_consume_until(
    aikernel_kafka: KafkaService, aikernel_kafka_topic: TopicFactory
) -> None:
    topic = aikernel_kafka_topic("events")
    for i in range(3):
        delivered = aikernel_kafka.produce(
            topic, f"event {i}", key=f"k{i}", headers={"source": b"test"}
        )
        assert (delivered.topic(), delivered.offset()) == (topic, i)
    found = aikernel_kafka.consume_until(topic, lambda m: m.value() == b"event 1")
    assert (found.key(), found.value(), found.offset()) == (b"k1", b"event 1", 1)
    assert found.headers() == [("source", b"test")]
    # without a group every call reads from the beginning
    assert aikernel_kafka.consume_until(topic, lambda m: True).value() == b"event 0"
    # in a group, each call goes on after the previous match
    group = f"{topic}.group"
    got = [aikernel_kafka.consume_until(topic, lambda m: True, group=group) for _ in range(3)]
    assert [m.value() for m in got] == [b"event 0", b"event 1", b"event 2"]


def test_kafka_consume_until_waits_for_a_topic_made_later(
    aikernel_kafka: KafkaService, aikernel_kafka_topic: TopicFactory
) -> None:
    import threading

    topic = aikernel_kafka_topic.name("late")

    def service_under_test() -> None:
        time.sleep(1.0)
        aikernel_kafka_topic("late")
        aikernel_kafka.produce(topic, b"hello")

    thread = threading.Thread(target=service_under_test)
    thread.start()
    try:
        found = aikernel_kafka.consume_until(topic, lambda m: True, timeout=30)
    finally:
        thread.join()
    assert found.value() == b"hello"


def test_kafka_consume_until_times_out_clearly(
    aikernel_kafka: KafkaService, aikernel_kafka_topic: TopicFactory
) -> None:
    topic = aikernel_kafka_topic("quiet")
    for value in (b"a", b"b"):
        aikernel_kafka.produce(topic, value)
    began = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        aikernel_kafka.consume_until(topic, lambda m: m.value() == b"z", timeout=2)
    assert 2 <= time.monotonic() - began < 10
    assert isinstance(info.value, TimeoutError)
    assert str(info.value) == (
        f"kafka: no message on topic {topic!r} matched within 2 s: 2 messages seen"
    )
    missing = aikernel_kafka_topic.name("never-made")
    with pytest.raises(WaitTimeout) as info:
        aikernel_kafka.consume_until(missing, lambda m: True, timeout=1)
    assert str(info.value) == (
        f"kafka: no message on topic {missing!r} matched within 1 s: 0 messages seen; "
        "the topic does not exist"
    )


def test_kafka_produce_raises_on_a_delivery_error(
    aikernel_kafka: KafkaService, aikernel_kafka_topic: TopicFactory
) -> None:
    from confluent_kafka.admin import NewTopic

    # a topic that takes 100-byte messages at most, from its creation on
    topic = aikernel_kafka_topic.name("small")
    admin = aikernel_kafka.admin()
    small = NewTopic(topic, num_partitions=1, config={"max.message.bytes": "100"})
    for future in admin.create_topics([small]).values():
        future.result(timeout=30)
    try:
        with pytest.raises(ServiceError) as info:
            aikernel_kafka.produce(topic, b"x" * 1000)
    finally:
        for future in admin.delete_topics([topic]).values():
            future.result(timeout=30)
    assert info.value.service == "kafka"
    assert str(info.value).startswith(
        f"kafka: producing to topic {topic!r} on {aikernel_kafka.bootstrap_servers} failed: "
    )
    assert "too large" in str(info.value).lower()


# ---- elasticsearch ---------------------------------------------------------------------------


def test_es_index_under_the_prefix_via_url(
    aikernel_es_index: IndexPrefix, aikernel_elasticsearch: ElasticsearchService
) -> None:
    index = aikernel_es_index.name("orders")
    with elasticsearch.Elasticsearch(aikernel_es_index.url) as es:
        es.index(index=index, document={"id": 1})
        es.index(index=index, document={"id": 2})
        aikernel_elasticsearch.wait_for_count(index, 2)
        assert es.count(index=index)["count"] == 2
        assert list(es.indices.get(index=f"{aikernel_es_index.prefix}*")) == [index]
    internal = urlsplit(aikernel_es_index.internal_url)
    assert (internal.hostname, internal.port) == ("elasticsearch", 9200)


def test_es_refresh_and_wait_for_count(
    aikernel_es_index: IndexPrefix, aikernel_elasticsearch: ElasticsearchService
) -> None:
    index = aikernel_es_index.name("docs")
    url = f"{aikernel_es_index.url}/{index}"
    assert _http.request("PUT", url, {"settings": {"refresh_interval": "-1"}}).ok
    assert _http.request("POST", f"{url}/_doc", {"a": 1}).status == 201

    def count() -> int:
        return int(_http.request("GET", f"{url}/_count").json()["count"])

    assert count() == 0, "not refreshed yet"
    aikernel_elasticsearch.refresh(index)
    assert count() == 1
    aikernel_elasticsearch.refresh()
    aikernel_elasticsearch.wait_for_count(index, 1, timeout=1)
    with pytest.raises(
        ServiceError, match=r"^elasticsearch: refreshing '\S+-nope' failed: HTTP 404"
    ):
        aikernel_elasticsearch.refresh(aikernel_es_index.name("nope"))


def test_es_wait_for_count_times_out_clearly(
    aikernel_es_index: IndexPrefix, aikernel_elasticsearch: ElasticsearchService
) -> None:
    index = aikernel_es_index.name("few")
    assert _http.request("POST", f"{aikernel_es_index.url}/{index}/_doc", {"a": 1}).ok
    began = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        aikernel_elasticsearch.wait_for_count(index, 3, timeout=1)
    assert 1 <= time.monotonic() - began < 5
    assert str(info.value) == (
        f"elasticsearch: index {index!r} did not reach 3 documents within 1 s: last count 1"
    )
    missing = aikernel_es_index.name("never")
    with pytest.raises(WaitTimeout) as info:
        aikernel_elasticsearch.wait_for_count(missing, 0, timeout=0.5)
    assert str(info.value).startswith(
        f"elasticsearch: index {missing!r} did not reach 0 documents within 0.5 s: no such index"
    )


# ---- vault -----------------------------------------------------------------------------------


def test_vault_url_and_token_reach_the_prefix(aikernel_vault_path: VaultPath) -> None:
    assert aikernel_vault_path.mount == "secret"
    session = _http.direct_session()  # hvac's own session would take a proxy from the env
    client = hvac.Client(
        url=aikernel_vault_path.url, token=aikernel_vault_path.token, session=session
    )
    try:
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{aikernel_vault_path.prefix}/db",
            secret={"user": "svc"},
            mount_point=aikernel_vault_path.mount,
        )
    finally:
        session.close()
    assert aikernel_vault_path.read("db") == {"user": "svc"}
    internal = urlsplit(aikernel_vault_path.internal_url)
    assert (internal.hostname, internal.port) == ("vault", 8200)


# ---- neo4j -----------------------------------------------------------------------------------


def test_neo4j_session_addresses(aikernel_neo4j_session: RollbackSession) -> None:
    assert aikernel_neo4j_session.auth is not None
    with neo4j.GraphDatabase.driver(
        aikernel_neo4j_session.uri, auth=aikernel_neo4j_session.auth
    ) as driver:
        records, _, _ = driver.execute_query("RETURN 1 AS one")
        assert records[0]["one"] == 1
    internal = urlsplit(aikernel_neo4j_session.internal_uri)
    assert (internal.scheme, internal.hostname, internal.port) == ("bolt", "neo4j", 7687)


# ---- the plugin: one name per run of a test --------------------------------------------------

RERUN_CONFTEST = """
import pytest
from _pytest.runner import runtestprotocol

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # as pytest-rerunfailures does: the same item runs twice, the session stays between
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    runtestprotocol(item, nextitem=item.parent, log=True)  # tears the test's fixtures down
    item._initrequest()  # what pytest-rerunfailures does before a rerun
    runtestprotocol(item, nextitem=nextitem, log=True)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""


def test_a_rerun_of_a_test_gets_a_new_name(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RERUN_CONFTEST)
    pytester.makepyfile(
        """
        import pathlib

        def test_twice(aikernel_redis_db, aikernel_pg, request):
            assert aikernel_pg.database == aikernel_redis_db.scope_name
            with pathlib.Path("names.txt").open("a") as out:
                out.write(aikernel_redis_db.scope_name + "\\n")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=2)
    names = (pytester.path / "names.txt").read_text().split()
    assert len(names) == 2 and len(set(names)) == 2, names
    assert all(STEM.match(name) for name in names), names
