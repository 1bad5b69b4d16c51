"""External mode, pointed at containers this test started itself (another session's stack)."""

from __future__ import annotations

import pytest

from pytest_aikernel import Settings, Stack
from pytest_aikernel.services import registry

SERVICES = ["postgres", "redis", "vault"]


@pytest.fixture(scope="module")
def running_stack(aikernel_settings: Settings):
    """A stack that plays "the services that already run" (like `docker compose up`)."""
    stack = Stack(aikernel_settings)
    try:
        stack.start(SERVICES)
        yield stack
    finally:
        stack.stop()


def exports(stack: Stack) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in stack:
        env.update(registry()[name].external_exports(stack[name]))
    return env


def test_external_mode_uses_running_services_and_seeds_only_when_asked(
    pytester: pytest.Pytester, running_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in exports(running_stack).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIKERNEL_MODE", "external")
    pytester.path.joinpath("seed.yaml").write_text("kv: {aikernel/external: {seeded: 'yes'}}\n")
    pytester.makepyfile(
        f"""
import docker, hvac, pytest

@pytest.mark.aikernel_stack("postgres", "redis", "vault")
def test_external(aikernel_stack, aikernel_postgres, aikernel_redis, aikernel_vault, aikernel_pg,
                  aikernel_redis_db):
    assert (aikernel_postgres.host, aikernel_postgres.port) == ("127.0.0.1", {running_stack["postgres"].port})
    with aikernel_postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert aikernel_pg.execute("SELECT current_database()").fetchone()[0].startswith("aik_")
    aikernel_redis_db.set("k", "v")
    client = aikernel_vault.client()
    assert client.secrets.kv.v2.read_secret_version(
        path="aikernel/external", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"] == {{"seeded": "yes"}}
    # nothing was started: no container of this session exists
    found = docker.from_env().containers.list(
        all=True, filters={{"label": "pytest-aikernel.session=" + aikernel_stack.session_id}})
    assert found == []
    assert aikernel_stack.running("redis").container_id == ""
"""
    )
    pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--aikernel-seed-external",
        "--aikernel-vault-seed=seed.yaml",
        timeout=300,
    ).assert_outcomes(passed=1)
    # without --aikernel-seed-external nothing is written; the earlier seed is still there
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=1)


def test_external_service_that_does_not_answer_names_the_env_var(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIKERNEL_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    pytester.makepyfile("def test_x(aikernel_redis):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--aikernel-mode=external",
        "--aikernel-startup-timeout=2",
        timeout=120,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"redis: nothing answered at 127.0.0.1:{port} within 2 s (external mode*"
            "point env AIKERNEL_REDIS_URL at it (default redis://127.0.0.1:6379/0)*"
        ]
    )


def test_external_seeding_under_xdist_runs_once(
    pytester: pytest.Pytester, running_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four workers, one seed: the first worker seeds under the run's lock, the others see it."""
    for key, value in exports(running_stack).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIKERNEL_MODE", "external")
    table = "seeded_" + pytester.path.name[-8:].lower().replace("-", "_")
    pytester.path.joinpath("count.sql").write_text(
        f"CREATE TABLE IF NOT EXISTS catalog.{table} (n int);\n"
        f"INSERT INTO catalog.{table} VALUES (1);\n"
    )
    pytester.makepyfile(
        """
import pytest

@pytest.mark.parametrize("i", range(8))
def test_seeded(aikernel_postgres, i):
    pass
"""
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "4",
        "--aikernel-seed-external",
        "--aikernel-postgres-init=count.sql",
        timeout=300,
    )
    result.assert_outcomes(passed=8)
    with running_stack["postgres"].connect() as conn:
        rows = conn.execute(f"SELECT count(*) FROM catalog.{table}").fetchone()
    assert rows == (1,), "the init file ran once, not once per worker"
