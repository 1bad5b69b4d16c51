"""aikernel_world: a test's own resources, described in Vault, and the example service project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import read_kv

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog_service"
SEEN: dict[str, str] = {}


@pytest.mark.aikernel_stack("postgres", "redis", "kafka", "elasticsearch", "vault")
def test_world_entries_point_at_the_tests_own_resources(aikernel_world, aikernel_stack) -> None:
    world = aikernel_world
    assert set(world) == {"postgres", "redis", "kafka", "elasticsearch"}
    vault = aikernel_stack["vault"]
    pg = read_kv(vault, world.entry_path("postgres"))
    session_pg = read_kv(vault, "aikernel/postgres")
    assert pg["database"] == world["postgres"].database == world.name
    assert session_pg["database"] == "aikernel_catalog"
    assert {k: v for k, v in pg.items() if k != "database"} == {
        k: v for k, v in session_pg.items() if k != "database"
    }, "every other field is the session's"
    assert read_kv(vault, world.entry_path("redis"))["db"] == world["redis"].db
    assert read_kv(vault, world.entry_path("kafka"))["topic_prefix"] == world["kafka"].prefix
    es = read_kv(vault, world.entry_path("elasticsearch"))
    assert es["index_prefix"] == world["elasticsearch"].prefix
    # services without a per-test resource are described as in the session
    assert read_kv(vault, world.entry_path("zookeeper")) == read_kv(vault, "aikernel/zookeeper")
    # one name for everything the test owns
    assert world["kafka"].prefix.startswith(world.name)
    assert world.vault_path.endswith(world.name)
    SEEN["path"] = world.vault_path


def test_world_is_removed_after_its_test(aikernel_vault) -> None:
    path = SEEN.get("path")
    assert path, "runs after the test above"
    import hvac.exceptions

    client = aikernel_vault.client()
    try:
        listed = client.secrets.kv.v2.list_secrets(path="tests", mount_point="secret")["data"][
            "keys"
        ]
    except hvac.exceptions.InvalidPath:  # nothing at all under tests/
        listed = []
    assert f"{path.split('/', 1)[1]}/" not in listed


@pytest.mark.aikernel_stack("postgres", "redis", "vault")
def test_world_env_host_and_in_network_forms(aikernel_world, aikernel_stack) -> None:
    import psycopg
    import redis

    host = aikernel_world.env()
    inside = aikernel_world.env(internal=True)
    assert host["AIKERNEL_WORLD_PATH"] == inside["AIKERNEL_WORLD_PATH"] == aikernel_world.vault_path
    assert host["VAULT_ADDR"] == aikernel_stack["vault"].url
    assert inside["VAULT_ADDR"] == aikernel_stack["vault"].internal_url
    with psycopg.connect(host["AIKERNEL_POSTGRES_URL"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (aikernel_world.name,)
    assert "@postgres:5432/" + aikernel_world.name in inside["AIKERNEL_POSTGRES_URL"]
    client = redis.Redis.from_url(host["AIKERNEL_REDIS_URL"])
    client.set("mine", "1")
    assert aikernel_world["redis"].get("mine") == b"1", "the env URL is the test's own database"
    client.close()
    assert inside["AIKERNEL_REDIS_URL"].endswith(f"@redis:6379/{aikernel_world['redis'].db}")
    assert ("AIKERNEL_REDIS_REPLICA_URL" in host) == ("redis-replica" in aikernel_stack), (
        "every service that runs, and only those"
    )


def test_the_example_service_is_isolated_per_test_under_xdist(tmp_path: Path) -> None:
    """The example project (examples/catalog_service): the service in process and as its own
    container, each test in its own world, two workers at once."""
    env = {
        **os.environ,
        "CATALOG_BASE_IMAGE": os.environ.get(
            "CATALOG_BASE_IMAGE", "aikernel-standin/base:bookworm"
        ),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "9 passed" in done.stdout, done.stdout[-3000:]


def test_topics_the_code_under_test_makes_under_the_prefix_are_deleted_too(
    aikernel_world, aikernel_kafka
) -> None:
    from confluent_kafka.admin import NewTopic

    mine = aikernel_world["kafka"].name("made-by-the-service")
    admin = aikernel_kafka.admin()
    for future in admin.create_topics([NewTopic(mine, 1, 1)]).values():
        future.result(timeout=30)
    SEEN["topic"] = mine


def test_those_topics_are_gone_after_their_test(aikernel_kafka) -> None:
    import time

    mine = SEEN.get("topic")
    assert mine, "runs after the test above"
    admin = aikernel_kafka.admin()
    deadline = time.monotonic() + 20  # deleted in the background, after the test
    while mine in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mine not in admin.list_topics(timeout=10).topics
