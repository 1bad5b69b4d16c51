"""Many runners, one stack: four concurrent pytest runs, each with ``-n 2``, against one
``aikernel up`` stack in external mode, as CI runners on several machines would share it.

Every per-test resource (Postgres clone, Redis database, Kafka topic, Elasticsearch index prefix,
Vault path) must be the test's own across all runners and workers, every run passes, seeding an
external stack runs once when several runners start together, and the stack is left clean.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_lifecycle import RECORD

RUNNERS = 4
TESTS_PER_RUNNER = 8

SUITE = (
    RECORD
    + """
import json, os, time
import pytest

RUN = os.environ["AIKTEST_RUN"]

@pytest.mark.parametrize("n", range(__TESTS__))
def test_isolated(n, aikernel_pg, aikernel_redis_db, aikernel_kafka_topic, aikernel_es_index,
                  aikernel_vault_path, aikernel_elasticsearch):
    me = f"{RUN}-{n}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    # Postgres: a table of the clone sees only this test's row
    aikernel_pg.execute("CREATE TABLE mine (who text)")
    aikernel_pg.execute("INSERT INTO mine VALUES (%s)", (me,))
    aikernel_pg.commit()
    # Redis: this test's database holds only its key
    aikernel_redis_db.set("who", me)
    # Kafka: this test's topic holds only its message
    topic = aikernel_kafka_topic.make("events")
    # Elasticsearch: this test's index holds only its document
    index = aikernel_es_index.name("docs")
    es = aikernel_elasticsearch.client()
    es.index(index=index, document={"who": me}, refresh=True)
    # Vault: this test's path holds only its secret
    aikernel_vault_path.write("who", who=me)
    time.sleep(0.2)  # let other runners' tests overlap with this one
    assert aikernel_pg.execute("SELECT who FROM mine").fetchall() == [(me,)]
    assert aikernel_redis_db.dbsize() == 1 and aikernel_redis_db.get("who") == me.encode()
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": aikernel_kafka_topic.bootstrap_servers})
    producer.produce(topic, me.encode())
    assert producer.flush(10) == 0
    assert es.count(index=aikernel_es_index.prefix + "*")["count"] == 1
    vault = aikernel_vault_path.vault.client()
    listed = vault.secrets.kv.v2.list_secrets(path=aikernel_vault_path.prefix, mount_point="secret")
    assert listed["data"]["keys"] == ["who"]
    assert aikernel_vault_path.read("who") == {"who": me}
    record(f"name-{me}", json.dumps({
        "pg": aikernel_pg.database, "redis": aikernel_redis_db.db, "topic": topic,
        "index": index, "vault": aikernel_vault_path.prefix, "scope": aikernel_pg.scope_name,
    }))
"""
).replace("__TESTS__", str(TESTS_PER_RUNNER))


def _aikernel(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_aikernel", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def up_stack(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """`aikernel up` of the services the suite needs, in a private cache folder; its exports."""
    home = tmp_path / "up"
    home.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    services = ("postgres", "redis", "zookeeper", "kafka", "elasticsearch", "vault")
    up = _aikernel(home, env, "up", *services)
    exports = dict(
        re.findall(r"^export (\w+)=(.*)$", up.stdout, flags=re.MULTILINE),
    )
    exports = {k: shlex.split(v)[0] for k, v in exports.items()}
    try:
        yield {**env, **exports}, home
    finally:
        _aikernel(home, env, "down")


def _leftovers(env: dict[str, str]) -> dict[str, list[str]]:
    """aik_* resources left in the external stack."""
    import hvac
    import psycopg
    import redis
    from confluent_kafka.admin import AdminClient
    from elasticsearch import Elasticsearch

    out: dict[str, list[str]] = {}
    with psycopg.connect(env["AIKERNEL_POSTGRES_URL"], autocommit=True) as conn:
        rows = conn.execute(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'aik\_%'"
        ).fetchall()
    out["postgres"] = [r[0] for r in rows]
    client = redis.Redis.from_url(env["AIKERNEL_REDIS_URL"])
    out["redis"] = [
        f"db{db}"
        for db in range(1, 16)
        if redis.Redis.from_url(env["AIKERNEL_REDIS_URL"], db=db).dbsize()
    ]
    client.close()
    admin = AdminClient({"bootstrap.servers": env["AIKERNEL_KAFKA_BOOTSTRAP_SERVERS"]})
    topics = admin.list_topics(timeout=10).topics
    out["kafka"] = sorted(t for t in topics if t.startswith("aik_"))
    es = Elasticsearch(env["AIKERNEL_ELASTICSEARCH_URL"])
    out["elasticsearch"] = sorted(es.indices.get(index="aik_*"))
    vault = hvac.Client(url=env["AIKERNEL_VAULT_ADDR"], token=env["AIKERNEL_VAULT_TOKEN"])
    try:
        listed = vault.secrets.kv.v2.list_secrets(path="tests", mount_point="secret")
        out["vault"] = list(listed["data"]["keys"])
    except hvac.exceptions.InvalidPath:
        out["vault"] = []
    return {k: v for k, v in out.items() if v}


def test_four_runners_share_one_stack_in_external_mode(
    pytester: pytest.Pytester, up_stack: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _home = up_stack
    out = tmp_path / "out"
    out.mkdir()
    procs = []
    began = time.monotonic()
    for runner in range(RUNNERS):
        folder = pytester.mkdir(f"runner{runner}")
        (folder / "test_suite.py").write_text(SUITE)
        (folder / "pytest.ini").write_text("[pytest]\n")
        runner_env = {
            **env,
            "AIKTEST_OUT": str(out),
            "AIKTEST_RUN": f"r{runner}",
            "AIKERNEL_MODE": "external",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-q"],
                cwd=folder,
                env=runner_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for proc in procs:
        text, _ = proc.communicate(timeout=900)
        outputs.append((proc.returncode, text))
    elapsed = time.monotonic() - began
    for code, text in outputs:
        assert code == 0, text
        assert f"{TESTS_PER_RUNNER} passed" in text, text
    names = [p.read_text() for p in out.glob("name-*")]
    assert len(names) == RUNNERS * TESTS_PER_RUNNER
    import json

    decoded = [json.loads(n) for n in names]
    for key in ("pg", "topic", "index", "vault", "scope"):
        values = [d[key] for d in decoded]
        assert len(set(values)) == len(values), f"{key} names repeat across runners: {values}"
    assert _leftovers(env) == {}, "the external stack is left clean"
    print(f"{RUNNERS} runners x -n 2, {len(names)} tests, {elapsed:.1f} s")


SEED_ONCE = """
CREATE TABLE IF NOT EXISTS seed_runs (at timestamptz DEFAULT now());
INSERT INTO seed_runs DEFAULT VALUES;
"""


def test_seeding_an_external_stack_runs_once_for_concurrent_runners(
    pytester: pytest.Pytester, up_stack: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _home = up_stack
    seed = tmp_path / "seed_once.sql"
    seed.write_text(SEED_ONCE)
    procs = []
    for runner in range(RUNNERS):
        folder = pytester.mkdir(f"seeder{runner}")
        (folder / "test_seeded.py").write_text(
            "def test_seeded(aikernel_postgres):\n"
            "    with aikernel_postgres.connect('aikernel_catalog') as conn:\n"
            "        assert conn.execute('SELECT count(*) FROM seed_runs').fetchone()[0] >= 1\n"
        )
        (folder / "pytest.ini").write_text("[pytest]\n")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "-q",
                    "--aikernel-seed-external",
                    f"--aikernel-postgres-init={seed}",
                ],
                cwd=folder,
                env={**env, "AIKERNEL_MODE": "external"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, text
    import psycopg

    with psycopg.connect(env["AIKERNEL_POSTGRES_URL"], autocommit=True) as conn:
        runs = conn.execute("SELECT count(*) FROM seed_runs").fetchone()
    admin_dsn = env["AIKERNEL_POSTGRES_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        ledger = dict(conn.execute("SELECT service, key FROM aikernel_seeded").fetchall())
    assert runs == (1,), "the init file ran once for four runners"
    assert "postgres" in ledger
