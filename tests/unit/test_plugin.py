"""The plugin as users meet it, without a Docker engine: selection, markers, skips, fixtures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_aikernel.secrets import SecretStore, mask_value
from pytest_aikernel.services import names, platform_names
from pytest_aikernel.services.postgres import PostgresService

TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.aikernel_stack("redis-replica")
def test_marked():
    pass

def test_fixture(aikernel_vault):
    pass
"""


def test_selected_services_are_the_union_of_markers_and_fixtures(pytester: pytest.Pytester):
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        ["aikernel: services needed by the selected tests: redis, redis-replica, vault"]
    )


def test_deselected_tests_do_not_count(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("--collect-only", "-q", "-k", "marked")
    result.stdout.fnmatch_lines(
        ["aikernel: services needed by the selected tests: redis, redis-replica"]
    )


def test_stack_fixture_without_marker_needs_everything(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_all(aikernel_stack):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        ["aikernel: services needed by the selected tests: " + ", ".join(platform_names())]
    )


@pytest.mark.parametrize(
    "test",
    [
        "@pytest.mark.aikernel_stack\ndef test_all():\n    pass\n",
        "def test_all(aikernel_stack):\n    pass\n",
    ],
    ids=["bare marker", "stack fixture"],
)
def test_every_service_is_the_thirteen_without_the_toxiproxy_helper(
    pytester: pytest.Pytester, test: str
) -> None:
    """Toxiproxy (17 published ports) starts only for a test that asks for faults or names it."""
    assert len(platform_names()) == 13
    assert set(names()) - set(platform_names()) == {"toxiproxy"}
    pytester.makepyfile("import pytest\n\n" + test)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["aikernel: services needed by the selected tests: *"])
    line = next(x for x in result.stdout.lines if "services needed" in x)
    assert "toxiproxy" not in line
    assert "kibana" in line and "jaeger" in line


def test_a_marker_that_names_toxiproxy_brings_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.aikernel_stack('toxiproxy')\ndef test_t():\n    pass\n"
    )
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["aikernel: services needed by the selected tests: toxiproxy"])


def test_no_services_no_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert "services needed" not in result.stdout.str()


def test_unknown_marker_service_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n@pytest.mark.aikernel_stack('postgress')\ndef test_x():\n    pass\n"
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*aikernel_stack on test_unknown_marker*'postgress'*known services: postgres, *"]
    )


def test_docker_missing_skip_names_the_fix(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-rs", "--aikernel-docker-missing=skip")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*no Docker engine answered at unix:///nonexistent/aikernel-unit-tests.sock*"
            "Start Docker*DOCKER_HOST*--aikernel-docker-missing=skip*",
        ]
    )


def test_docker_missing_fail_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("--aikernel-docker-missing=fail")
    assert result.ret != 0
    result.assert_outcomes()
    result.stderr.fnmatch_lines(
        [
            "*2 selected test(s) need the stack, but no Docker engine answered*",
        ]
    )


def test_docker_missing_fails_by_default_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(TESTS)
    result = pytester.runpytest()
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*failing because --aikernel-docker-missing=fail, from env CI*"])


def test_docker_missing_does_not_touch_tests_without_services(pytester: pytest.Pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--aikernel-docker-missing=fail")
    result.assert_outcomes(passed=1)


def test_every_public_fixture_has_a_docstring(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--fixtures", "-v")
    text = result.stdout.str()
    for name in (
        "aikernel_settings",
        "aikernel_stack",
        "aikernel_postgres",
        "aikernel_postgres_replica",
        "aikernel_redis",
        "aikernel_redis_replica",
        "aikernel_vault",
    ):
        assert f"{name} [session scope]" in text
    block = text.split("aikernel_postgres_replica [session scope]")[1].split("\n\n")[0]
    assert "wait_for_replication" in block


def test_loading_the_plugin_imports_no_client() -> None:
    code = (
        "import sys, pytest_aikernel, pytest_aikernel.plugin\n"
        "heavy = ['psycopg', 'redis', 'hvac', 'docker', 'testcontainers', 'yaml', 'requests']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_secrets_are_masked() -> None:
    store = SecretStore()
    pw = store.get("postgres.password")
    assert pw == store.get("postgres.password"), "one value per name and stack"
    assert store.get("redis.password") != pw
    assert len(pw) >= 32
    text = store.mask(f"password={pw} again {pw}")
    assert pw not in text
    assert mask_value(pw) in text
    assert mask_value("short") == "***"


def test_service_objects_mask_passwords_in_repr() -> None:
    svc = PostgresService(
        host="127.0.0.1",
        port=5,
        user="u",
        password="s3cret-value-long-enough",
        internal_host="postgres",
    )
    assert "s3cret-value-long-enough" not in repr(svc)
    assert "host='127.0.0.1'" in repr(svc)
    assert svc.dsn() == "postgresql://u:s3cret-value-long-enough@127.0.0.1:5/aikernel_catalog"
    assert svc.dsn("aikernel_audit").endswith("/aikernel_audit")
    assert svc.internal_dsn().endswith("@postgres:5432/aikernel_catalog")


def test_surely_skipped_tests_need_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.skip(reason="no kibana image")
def test_a(aikernel_kibana):
    pass

@pytest.mark.skipif(True, reason="no grafana image")
def test_b(aikernel_grafana):
    pass

@pytest.mark.skipif(False, reason="runs")
def test_c(aikernel_redis):
    pass
"""
    )
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["aikernel: services needed by the selected tests: redis"])
