"""Each service of the stack used through its real client, on the session's shared stack."""

from __future__ import annotations

import os

import docker
import hvac
import psycopg
import pytest
import redis

from pytest_aikernel import (
    PostgresReplicaService,
    PostgresService,
    RedisReplicaService,
    RedisService,
    VaultService,
)
from pytest_aikernel.runtime.docker import LABEL_OWNER, LABEL_SERVICE, LABEL_SESSION, Owner

from .conftest import FOUNDATION, containers_of, read_kv, run_once

SCHEMAS = {
    "aikernel_catalog": ["catalog", "metadata", "lineage", "audit"],
    "aikernel_audit": ["audit"],
}


@pytest.mark.parametrize(("dbname", "schema"), [(d, s) for d, ss in SCHEMAS.items() for s in ss])
def test_rows_written_in_every_schema(aikernel_postgres: PostgresService, dbname, schema) -> None:
    table = f"{schema}.it_rows_{dbname}"
    with aikernel_postgres.connect(dbname) as conn:
        owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
        assert owner == ("aikernel",)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (v text)")
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (f"{dbname}.{schema}",))
        conn.commit()
    with aikernel_postgres.connect(dbname) as conn:
        rows = conn.execute(f"SELECT v FROM {table}").fetchall()
    assert (f"{dbname}.{schema}",) in rows


def test_user_init_files_ran_in_their_databases(aikernel_postgres: PostgresService) -> None:
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT name FROM catalog.resources").fetchall() == [
            ("seeded; by init file",)
        ]
    with aikernel_postgres.connect("aikernel_audit") as conn:
        assert conn.execute("SELECT kind FROM audit.events").fetchall() == [("seeded",)]


def _host_side(stack: object, service: str) -> str:
    """Where the test process reaches ``service``: loopback on a local engine, the remote
    engine's address, or the service's alias when pytest runs in a container of the engine."""
    engine = stack.runtime.engine  # type: ignore[attr-defined]
    return service if engine.attached else str(engine.host)


@FOUNDATION
def test_host_side_is_the_engines_published_address(
    aikernel_stack, aikernel_postgres, aikernel_redis, aikernel_vault
) -> None:
    engine = aikernel_stack.runtime.engine
    if engine.local and not engine.attached:
        assert aikernel_postgres.host == aikernel_redis.host == aikernel_vault.host == "127.0.0.1"
    pg_host = _host_side(aikernel_stack, "postgres")
    vault_host = _host_side(aikernel_stack, "vault")
    assert aikernel_postgres.host == pg_host
    assert aikernel_vault.url.startswith(f"http://{vault_host}:")
    assert f"@{pg_host}:" in aikernel_postgres.dsn()


def test_replica_reads_what_the_primary_committed(
    aikernel_postgres: PostgresService, aikernel_postgres_replica: PostgresReplicaService
) -> None:
    with aikernel_postgres.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS catalog.replicated (v int)")
        conn.execute("INSERT INTO catalog.replicated VALUES (42)")
        conn.commit()
    aikernel_postgres_replica.wait_for_replication(timeout=10)
    with aikernel_postgres_replica.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert (42,) in conn.execute("SELECT v FROM catalog.replicated").fetchall()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO catalog.replicated VALUES (1)")


def test_redis_password_required_and_replica_follows(
    aikernel_redis: RedisService, aikernel_redis_replica: RedisReplicaService
) -> None:
    anonymous = redis.Redis(host=aikernel_redis.host, port=aikernel_redis.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    master = aikernel_redis.client()
    master.set("it:key", "value-from-master")
    aikernel_redis_replica.wait_for_replication()
    replica = aikernel_redis_replica.client()
    assert replica.get("it:key") == b"value-from-master"
    with pytest.raises(redis.ReadOnlyError):
        replica.set("it:key", "x")
    assert redis.Redis.from_url(aikernel_redis.url).get("it:key") == b"value-from-master"


@FOUNDATION
def test_vault_describes_every_other_service(aikernel_stack, aikernel_vault) -> None:
    for name in aikernel_stack:
        if name == "vault":
            continue
        entry = read_kv(aikernel_vault, f"aikernel/{name}")
        running = aikernel_stack.running(name)
        assert entry["host"] == _host_side(aikernel_stack, name)
        assert entry["internal_host"] == name
        assert entry["port"] == next(iter(running.ports.values()))
        if name in ("postgres", "postgres-replica", "redis", "redis-replica", "neo4j", "grafana"):
            assert entry["password"]


def test_postgres_credentials_from_vault_log_in(aikernel_vault: VaultService) -> None:
    entry = read_kv(aikernel_vault, "aikernel/postgres")
    with psycopg.connect(
        host=entry["host"],
        port=entry["port"],
        user=entry["username"],
        password=entry["password"],
        dbname=entry["database"],
    ) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "aikernel",
            "aikernel_catalog",
        )


def test_seeded_kv_policy_approle_and_transit(aikernel_vault: VaultService) -> None:
    assert read_kv(aikernel_vault, "aikernel/api") == {"signing_key": "abc"}
    creds = aikernel_vault.approle_credentials("catalog-service")
    app = hvac.Client(url=aikernel_vault.url)
    login = app.auth.approle.login(role_id=creds["role_id"], secret_id=creds["secret_id"])
    assert "catalog-reader" in login["auth"]["policies"]
    # the policy lets the role read the stack's entries, and nothing else
    data = app.secrets.kv.v2.read_secret_version(
        path="aikernel/redis", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert data["internal_host"] == "redis"
    with pytest.raises(hvac.exceptions.Forbidden):
        app.secrets.kv.v2.create_or_update_secret(path="aikernel/x", secret={"a": 1})
    root = aikernel_vault.client()
    import base64

    plain = base64.b64encode(b"top secret").decode()
    cipher = root.secrets.transit.encrypt_data(name="aikernel-kek", plaintext=plain)
    text = cipher["data"]["ciphertext"]
    assert text.startswith("vault:v1:")
    back = root.secrets.transit.decrypt_data(name="aikernel-kek", ciphertext=text)
    assert base64.b64decode(back["data"]["plaintext"]) == b"top secret"
    with pytest.raises(KeyError, match="catalog-service"):
        aikernel_vault.approle_credentials("nope")


@FOUNDATION
def test_containers_are_labelled_and_published_on_the_bind_address_only(
    aikernel_stack, docker_api: docker.DockerClient
) -> None:
    """Loopback on a local engine; the engine's address on a remote one."""
    bind = aikernel_stack.runtime.engine.bind
    if aikernel_stack.runtime.engine.local:
        assert bind == "127.0.0.1"
    # besides the services: the keepers of tmpfs data that faults of earlier tests made
    services = {
        name: status
        for name, status in containers_of(docker_api, aikernel_stack.session_id).items()
        if not name.startswith("keeper:")
    }
    assert services == dict.fromkeys(aikernel_stack, "running")
    for c in docker_api.containers.list(
        filters={"label": f"{LABEL_SESSION}={aikernel_stack.session_id}"}
    ):
        if c.labels[LABEL_SERVICE].startswith("keeper:"):
            assert c.labels[LABEL_SERVICE].split(":", 1)[1] in aikernel_stack
            assert not c.attrs["NetworkSettings"]["Ports"], "a keeper publishes nothing"
            continue
        assert c.labels[LABEL_SERVICE] in aikernel_stack
        owner = Owner.parse(c.labels[LABEL_OWNER])
        assert owner is not None and owner.pid == os.getpid() and owner.boot and owner.pidns
        published = {p: b for p, b in c.attrs["NetworkSettings"]["Ports"].items() if b}
        running = aikernel_stack.running(c.labels[LABEL_SERVICE])
        assert {int(p.split("/")[0]) for p in published} == set(running.ports)
        for bindings in published.values():
            assert {b["HostIp"] for b in bindings} == {bind}


@FOUNDATION
def test_a_container_on_the_stack_network_reaches_services_by_alias(
    aikernel_stack, aikernel_postgres: PostgresService, docker_api: docker.DockerClient
) -> None:
    image = aikernel_stack.running("postgres").image
    network = aikernel_stack.runtime.network_name
    output = run_once(
        docker_api,
        image,
        entrypoint=["psql", aikernel_postgres.internal_dsn(), "-tAc", "SELECT 'via-alias'"],
        network=network,
        user="postgres",
    )
    assert output.decode().strip() == "via-alias"


@FOUNDATION
def test_unknown_service_lookup_says_what_runs(aikernel_stack) -> None:
    with pytest.raises(KeyError, match="known services"):
        aikernel_stack["mongo"]
    assert "postgres" in aikernel_stack
