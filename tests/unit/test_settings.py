"""Settings: precedence CLI > ini > env > default, parsing and error messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_aikernel.errors import ConfigError
from pytest_aikernel.services import image_for, names
from pytest_aikernel.settings import OPTIONS, RawSources, Settings, resolve

KNOWN = names()


def raw(tmp_path: Path, cli=None, ini=None, env=None) -> RawSources:
    return RawSources(
        cli=cli or {},
        ini=ini or {},
        env=env or {},
        ini_dir=tmp_path / "ini",
        cwd=tmp_path,
        inipath=str(tmp_path / "ini" / "pytest.ini"),
    )


def test_defaults(tmp_path: Path) -> None:
    s = resolve(raw(tmp_path), KNOWN)
    assert s.startup_timeout == 120
    assert s.docker_missing == "skip"
    assert s.images == {}
    assert s.postgres_init == ()
    assert s.vault_seed is None
    assert image_for("postgres", s) == "postgres:15"
    assert image_for("postgres-replica", s) == "postgres:15"
    assert image_for("redis", s) == "redis:7"
    assert image_for("redis-replica", s) == "redis:7"
    assert image_for("vault", s) == "hashicorp/vault:1.15"


@pytest.mark.parametrize(
    ("cli", "ini", "env", "expected"),
    [
        ("5", "6", "7", 5.0),
        (None, "6", "7", 6.0),
        (None, None, "7", 7.0),
        (None, None, None, 120.0),
    ],
)
def test_timeout_precedence(tmp_path: Path, cli, ini, env, expected) -> None:
    s = resolve(
        raw(
            tmp_path,
            cli={"startup_timeout": cli},
            ini={"startup_timeout": ini},
            env={"AIKERNEL_STARTUP_TIMEOUT": env} if env else {},
        ),
        KNOWN,
    )
    assert s.startup_timeout == expected


@pytest.mark.parametrize("bad", ["abc", "0", "-3", "nan", "inf"])
def test_bad_timeout_quotes_option_and_value(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, cli={"startup_timeout": bad}), KNOWN)
    assert "--aikernel-startup-timeout" in str(info.value)
    assert repr(bad) in str(info.value)


def test_bad_timeout_from_env_names_env_var(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env AIKERNEL_STARTUP_TIMEOUT.*'soon'"):
        resolve(raw(tmp_path, env={"AIKERNEL_STARTUP_TIMEOUT": "soon"}), KNOWN)


def test_images_precedence_is_per_service(tmp_path: Path) -> None:
    s = resolve(
        raw(
            tmp_path,
            cli={"images": ["redis=cli/redis:1"]},
            ini={"images": ["redis=ini/redis:1", "vault=ini/vault:1"]},
            env={
                "AIKERNEL_IMAGE_REDIS": "env/redis:1",
                "AIKERNEL_IMAGE_VAULT": "env/vault:1",
                "AIKERNEL_IMAGE_POSTGRES_REPLICA": "env/pgr:1",
            },
        ),
        KNOWN,
    )
    assert s.images == {
        "redis": "cli/redis:1",
        "vault": "ini/vault:1",
        "postgres-replica": "env/pgr:1",
    }
    assert s.source_of("images.redis") == "--aikernel-image"
    assert s.source_of("images.vault").startswith("ini aikernel_images")
    assert s.source_of("images.postgres-replica") == "env AIKERNEL_IMAGE_POSTGRES_REPLICA"
    # replicas follow their primary unless overridden themselves
    assert image_for("redis-replica", s) == "cli/redis:1"
    assert image_for("postgres-replica", s) == "env/pgr:1"
    assert image_for("postgres", s) == "postgres:15"


@pytest.mark.parametrize(
    ("route", "kwargs", "needle"),
    [
        ("cli", {"cli": {"images": ["mongo=mongo:7"]}}, "--aikernel-image"),
        ("ini", {"ini": {"images": ["mongo=mongo:7"]}}, "ini aikernel_images"),
        ("env", {"env": {"AIKERNEL_IMAGE_MONGO": "mongo:7"}}, "env AIKERNEL_IMAGE_MONGO"),
    ],
)
def test_unknown_image_service_lists_known_names(tmp_path: Path, route, kwargs, needle) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, **kwargs), KNOWN)
    text = str(info.value)
    assert needle in text
    assert "mongo" in text.lower()
    for name in KNOWN:
        assert name in text


def test_malformed_image_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--aikernel-image: expected SERVICE=IMAGE, got 'redis'"):
        resolve(raw(tmp_path, cli={"images": ["redis"]}), KNOWN)


def test_docker_missing_defaults_to_fail_in_ci(tmp_path: Path) -> None:
    assert resolve(raw(tmp_path, env={"CI": "true"}), KNOWN).docker_missing == "fail"
    assert resolve(raw(tmp_path, env={"CI": "github"}), KNOWN).docker_missing == "fail"
    assert resolve(raw(tmp_path, env={"CI": "0"}), KNOWN).docker_missing == "skip"
    assert resolve(raw(tmp_path, env={"CI": "false"}), KNOWN).docker_missing == "skip"
    explicit = resolve(raw(tmp_path, env={"CI": "1"}, cli={"docker_missing": "skip"}), KNOWN)
    assert explicit.docker_missing == "skip"


def test_docker_missing_rejects_other_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--aikernel-docker-missing: .*'maybe'"):
        resolve(raw(tmp_path, cli={"docker_missing": "maybe"}), KNOWN)


def test_postgres_init_paths_relative_to_ini_folder_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "ini").mkdir()
    (tmp_path / "ini" / "a.sql").write_text("select 1")
    (tmp_path / "b.sql").write_text("select 1")
    s = resolve(raw(tmp_path, ini={"postgres_init": ["a.sql", "aikernel_audit:a.sql"]}), KNOWN)
    assert [(f.path, f.database) for f in s.postgres_init] == [
        (tmp_path / "ini" / "a.sql", "aikernel_catalog"),
        (tmp_path / "ini" / "a.sql", "aikernel_audit"),
    ]
    s = resolve(raw(tmp_path, cli={"postgres_init": ["b.sql"]}), KNOWN)
    assert [f.path for f in s.postgres_init] == [tmp_path / "b.sql"]


def test_postgres_init_env_splits_on_pathsep_and_keeps_database_prefix(tmp_path: Path) -> None:
    for name in ("one.sql", "two.sql", "three.sql"):
        (tmp_path / name).write_text("select 1")
    value = os.pathsep.join(["one.sql", "aikernel_audit", "two.sql", str(tmp_path / "three.sql")])
    s = resolve(raw(tmp_path, env={"AIKERNEL_POSTGRES_INIT": value}), KNOWN)
    assert [(f.path.name, f.database) for f in s.postgres_init] == [
        ("one.sql", "aikernel_catalog"),
        ("two.sql", "aikernel_audit"),
        ("three.sql", "aikernel_catalog"),
    ]


def test_postgres_init_missing_file_names_setting_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, cli={"postgres_init": ["nope.sql"]}), KNOWN)
    assert "--aikernel-postgres-init" in str(info.value)
    assert "'nope.sql'" in str(info.value)


def test_vault_seed_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env AIKERNEL_VAULT_SEED: file 'seed.yaml' not found"):
        resolve(raw(tmp_path, env={"AIKERNEL_VAULT_SEED": "seed.yaml"}), KNOWN)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.startup_timeout = 3  # type: ignore[misc]


def test_every_option_has_three_routes() -> None:
    for opt in OPTIONS:
        assert opt.cli.startswith("--aikernel-")
        assert opt.ini.startswith("aikernel_")
        assert opt.env.startswith("AIKERNEL_")
        assert opt.help


# ---- as users meet it: through pytest ----------------------------------------------------------

SHOW = """
def test_show(aikernel_settings):
    print("TIMEOUT=%s" % aikernel_settings.startup_timeout)
    print("IMAGES=%s" % sorted(aikernel_settings.images.items()))
    print("INIT=%s" % [(f.path.name, f.database) for f in aikernel_settings.postgres_init])
"""


def test_cli_beats_ini_beats_env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(SHOW)
    pytester.makeini("[pytest]\naikernel_startup_timeout = 6\n")
    monkeypatch.setenv("AIKERNEL_STARTUP_TIMEOUT", "7")
    result = pytester.runpytest("-s", "--aikernel-startup-timeout=5")
    result.stdout.fnmatch_lines(["*TIMEOUT=5.0*"])
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*TIMEOUT=6.0*"])
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*TIMEOUT=7.0*"])


def test_ini_lines_for_images_and_init(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    sub = pytester.mkdir("sql")
    (sub / "x.sql").write_text("select 1")
    pytester.makeini(
        "[pytest]\n"
        "aikernel_images =\n    redis=my/redis:7\n    vault = my/vault:1\n"
        "aikernel_postgres_init =\n    sql/x.sql\n    aikernel_audit:sql/x.sql\n"
    )
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(
        [
            "*IMAGES=[[]('redis', 'my/redis:7'), ('vault', 'my/vault:1')[]]*",
            "*INIT=[[]('x.sql', 'aikernel_catalog'), ('x.sql', 'aikernel_audit')[]]*",
        ]
    )
    result.assert_outcomes(passed=1)


def test_usage_error_from_cli(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest("--aikernel-startup-timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--aikernel-startup-timeout*'soon'*"])


def test_usage_error_from_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    pytester.makeini("[pytest]\naikernel_images = mongo=mongo:7\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini aikernel_images*unknown service 'mongo'*known services*"])


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    for opt in OPTIONS:
        assert opt.cli in text
        assert opt.ini in text


def test_data_service_settings(tmp_path: Path) -> None:
    (tmp_path / "g.cypher").write_text("RETURN 1")
    s = resolve(
        raw(
            tmp_path,
            cli={"neo4j_init": ["g.cypher"], "kafka_topics": ["a", "b.c:3"]},
            env={
                "AIKERNEL_NEO4J_HEAP": "1G",
                "AIKERNEL_PROMETHEUS_SCRAPE": "api=127.0.0.1:8000/m, x=h:1",
            },
        ),
        KNOWN,
    )
    assert s.neo4j_init == (tmp_path / "g.cypher",)
    assert s.neo4j_heap == "1g"
    assert s.neo4j_pagecache == "64m"
    assert [(t.name, t.partitions) for t in s.kafka_topics] == [("a", 1), ("b.c", 3)]
    assert [(t.job, t.host, t.port, t.path) for t in s.prometheus_scrape] == [
        ("api", "127.0.0.1", 8000, "/m"),
        ("x", "h", 1, "/metrics"),
    ]


@pytest.mark.parametrize(
    ("cli", "needle"),
    [
        ({"neo4j_heap": "lots"}, "--aikernel-neo4j-heap: expected a memory size"),
        ({"elasticsearch_heap": "0"}, "--aikernel-elasticsearch-heap"),
        (
            {"kafka_topics": ["bad topic"]},
            "--aikernel-kafka-topic: 'bad topic' is not a valid topic",
        ),
        ({"kafka_topics": ["t:0"]}, "partitions of 't:0'"),
        ({"prometheus_scrape": ["nojob"]}, "--aikernel-prometheus-scrape: expected JOB=HOST:PORT"),
        (
            {"elasticsearch_init": ["missing.json"]},
            "--aikernel-elasticsearch-init: file 'missing.json'",
        ),
    ],
)
def test_data_service_setting_errors(tmp_path: Path, cli, needle) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw(tmp_path, cli=cli), KNOWN)
    assert needle in str(info.value)


def test_configuration_reference_names_every_option() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for opt in OPTIONS:
        for name in (opt.cli, opt.ini, opt.env):
            assert name in text, f"docs/configuration.md does not mention {name}"
