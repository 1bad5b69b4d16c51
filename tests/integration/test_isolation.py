"""Per-test fixtures: every test sees clean data while the stack is started once.

Pairs of tests write the same names; whichever runs second must not see the first one's data.
"""

from __future__ import annotations

import time

import hvac
import psycopg
import pytest


@pytest.mark.parametrize("attempt", [1, 2])
def test_pg_clone_is_fresh_and_seeded(aikernel_pg, attempt) -> None:
    name = aikernel_pg.info.dbname
    assert name.startswith("aik_") and name != "aikernel_catalog"
    assert aikernel_pg.execute("SELECT name FROM catalog.resources").fetchall() == [
        ("seeded; by init file",)
    ]
    aikernel_pg.execute("CREATE TABLE catalog.scratch (v int)")  # fails if a clone leaked
    aikernel_pg.execute("INSERT INTO catalog.resources (name) VALUES ('from a test')")
    aikernel_pg.commit()


USED_CLONES: list[str] = []


def databases(pg) -> set[str]:
    with pg.connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


@pytest.mark.parametrize("attempt", [1, 2])
def test_pg_clones_are_dropped_after_the_test(aikernel_pg_factory, aikernel_postgres, attempt):
    first = aikernel_pg_factory()
    audit = aikernel_pg_factory("aikernel_audit")
    assert audit.execute("SELECT kind FROM audit.events").fetchall() == [("seeded",)]
    assert first.info.dbname != audit.info.dbname
    with pytest.raises(ValueError, match="no template of database 'nope'"):
        aikernel_pg_factory("nope")
    assert {first.info.dbname, audit.info.dbname} <= databases(aikernel_postgres)
    # clones of earlier tests are dropped in the background, soon after their test
    deadline = time.monotonic() + 10
    while set(USED_CLONES) & databases(aikernel_postgres) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(USED_CLONES) & databases(aikernel_postgres)
    USED_CLONES.extend([first.info.dbname, audit.info.dbname])


def test_pg_audit_clone(aikernel_pg_audit) -> None:
    assert aikernel_pg_audit.execute("SELECT current_database()").fetchone()[0].startswith("aik_")
    assert aikernel_pg_audit.execute("SELECT count(*) FROM audit.events").fetchone() == (1,)


def test_session_database_is_untouched_by_clones(aikernel_postgres) -> None:
    with aikernel_postgres.connect() as conn:
        rows = conn.execute("SELECT name FROM catalog.resources").fetchall()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM catalog.scratch")
    assert ("from a test",) not in rows


@pytest.mark.parametrize("attempt", [1, 2])
def test_redis_db_is_clean(aikernel_redis_db, aikernel_redis, attempt) -> None:
    assert aikernel_redis_db.dbsize() == 0
    aikernel_redis_db.set("isolated", attempt)
    assert aikernel_redis_db.connection_pool.connection_kwargs["db"] != 0
    assert aikernel_redis.client().get("isolated") is None, "db 0 is not this test's"


EARLIER_VAULT_PATHS: list[str] = []


@pytest.mark.parametrize("attempt", [1, 2])
def test_vault_path_is_private_and_removed(aikernel_vault_path, aikernel_vault, attempt) -> None:
    client = aikernel_vault.client()
    for prefix in [*EARLIER_VAULT_PATHS, aikernel_vault_path.prefix]:
        with pytest.raises(hvac.exceptions.InvalidPath):  # earlier tests' paths were deleted
            client.secrets.kv.v2.list_secrets(path=prefix, mount_point="secret")
    EARLIER_VAULT_PATHS.append(aikernel_vault_path.prefix)
    aikernel_vault_path.write("nested/creds", user="u", attempt=attempt)
    assert aikernel_vault_path.read("nested/creds") == {"user": "u", "attempt": attempt}
    assert aikernel_vault_path.prefix.startswith("tests/aik_")
