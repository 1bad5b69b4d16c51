"""Settings: precedence CLI > -o > env > ini > default, parsing, unknown env vars, messages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pytest_aikernel.errors import ConfigError
from pytest_aikernel.services import image_for, names
from pytest_aikernel.settings import OPTIONS, RawSources, Settings, resolve, unknown_env

KNOWN = names()


def raw(tmp_path: Path, cli=None, ini=None, env=None, override=None) -> RawSources:
    return RawSources(
        cli=cli or {},
        ini=ini or {},
        override=override or {},
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
    ("cli", "override", "env", "ini", "expected", "source"),
    [
        ("5", "8", "7", "6", 5.0, "--aikernel-startup-timeout"),
        ("5", None, "7", "6", 5.0, "--aikernel-startup-timeout"),
        (None, "8", "7", "6", 8.0, "-o aikernel_startup_timeout"),
        (None, None, "7", "6", 7.0, "env AIKERNEL_STARTUP_TIMEOUT"),
        (None, None, None, "6", 6.0, "ini aikernel_startup_timeout"),
        (None, None, None, None, 120.0, "default"),
    ],
)
def test_timeout_precedence(tmp_path: Path, cli, override, env, ini, expected, source) -> None:
    s = resolve(
        raw(
            tmp_path,
            cli={"startup_timeout": cli},
            override={"startup_timeout": override},
            ini={"startup_timeout": ini},
            env={"AIKERNEL_STARTUP_TIMEOUT": env} if env else {},
        ),
        KNOWN,
    )
    assert s.startup_timeout == expected
    assert s.source_of("startup_timeout").startswith(source)


def test_env_beats_ini_for_a_list(tmp_path: Path) -> None:
    """Lists are not merged: the env var replaces the whole ini list."""
    ini = {"kafka_topics": ["from-ini:2", "other"]}
    s = resolve(raw(tmp_path, ini=ini, env={"AIKERNEL_KAFKA_TOPICS": "from-env:3"}), KNOWN)
    assert [(t.name, t.partitions) for t in s.kafka_topics] == [("from-env", 3)]
    assert s.source_of("kafka_topics") == "env AIKERNEL_KAFKA_TOPICS"
    s = resolve(raw(tmp_path, ini=ini), KNOWN)
    assert [t.name for t in s.kafka_topics] == ["from-ini", "other"]


def test_cli_beats_env_for_a_list(tmp_path: Path) -> None:
    s = resolve(
        raw(
            tmp_path,
            cli={"kafka_topics": ["from-cli"]},
            env={"AIKERNEL_KAFKA_TOPICS": "from-env:3"},
        ),
        KNOWN,
    )
    assert [t.name for t in s.kafka_topics] == ["from-cli"]
    assert s.source_of("kafka_topics") == "--aikernel-kafka-topic"


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
            override={"images": ["neo4j=o/neo4j:1"]},
            ini={"images": ["redis=ini/redis:1", "vault=ini/vault:1", "kafka=ini/kafka:1"]},
            env={
                "AIKERNEL_IMAGE_REDIS": "env/redis:1",
                "AIKERNEL_IMAGE_VAULT": "env/vault:1",
                "AIKERNEL_IMAGE_NEO4J": "env/neo4j:1",
                "AIKERNEL_IMAGE_POSTGRES_REPLICA": "env/pgr:1",
            },
        ),
        KNOWN,
    )
    assert s.images == {
        "redis": "cli/redis:1",
        "neo4j": "o/neo4j:1",
        "vault": "env/vault:1",
        "kafka": "ini/kafka:1",
        "postgres-replica": "env/pgr:1",
    }
    assert s.source_of("images.redis") == "--aikernel-image"
    assert s.source_of("images.neo4j") == "-o aikernel_images"
    assert s.source_of("images.vault") == "env AIKERNEL_IMAGE_VAULT"
    assert s.source_of("images.kafka").startswith("ini aikernel_images")
    assert s.source_of("images.postgres-replica") == "env AIKERNEL_IMAGE_POSTGRES_REPLICA"
    # replicas follow their primary unless overridden themselves
    assert image_for("redis-replica", s) == "cli/redis:1"
    assert image_for("postgres-replica", s) == "env/pgr:1"
    assert image_for("postgres", s) == "postgres:15"


@pytest.mark.parametrize(
    ("route", "kwargs", "needle"),
    [
        ("cli", {"cli": {"images": ["mongo=mongo:7"]}}, "--aikernel-image"),
        ("override", {"override": {"images": ["mongo=mongo:7"]}}, "-o aikernel_images"),
        ("ini", {"ini": {"images": ["mongo=mongo:7"]}}, "ini aikernel_images"),
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


def test_unknown_env_vars_are_ignored_and_named_with_the_closest_known_name(
    tmp_path: Path,
) -> None:
    env = {
        "AIKERNEL_STARTUP_TIMEOUTT": "5",
        "AIKERNEL_IMAGE_MONGO": "mongo:7",
        "AIKERNEL_IMAGE_POSTGRE": "my/pg:15",
        "AIKERNEL_ZZZ": "1",
        "AIKERNEL_STARTUP_TIMEOUT": "9",
    }
    s = resolve(raw(tmp_path, env=env), KNOWN)
    assert s.startup_timeout == 9
    assert s.images == {}
    messages = unknown_env(env, KNOWN)
    assert len(messages) == 4
    by_name = {m.split()[1].rstrip(":"): m for m in messages}
    assert "did you mean AIKERNEL_STARTUP_TIMEOUT?" in by_name["AIKERNEL_STARTUP_TIMEOUTT"]
    assert "unknown service 'mongo'" in by_name["AIKERNEL_IMAGE_MONGO"]
    for name in KNOWN:
        assert name in by_name["AIKERNEL_IMAGE_MONGO"]
    assert "did you mean AIKERNEL_IMAGE_POSTGRES?" in by_name["AIKERNEL_IMAGE_POSTGRE"]
    assert "docs/configuration.md" in by_name["AIKERNEL_ZZZ"]


def test_every_variable_the_plugin_reads_is_known() -> None:
    """Settings, images, and the external-mode variables (all of them, also those beyond each
    service's external_env, such as Vault's token): exactly what `aikernel up` exports."""
    from pytest_aikernel.services import registry

    env = {opt.env: "x" for opt in OPTIONS if opt.field != "images"}
    env.update({f"AIKERNEL_IMAGE_{n.upper().replace('-', '_')}": "x" for n in KNOWN})
    env.update({svc.external_env: "x" for svc in registry().values()})
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    external = text[text.index("### External mode") :]
    external = external[: external.index("\n## ")]
    documented = set(re.findall(r"`(AIKERNEL_[A-Z0-9_]+)`", external))
    assert {"AIKERNEL_VAULT_TOKEN", "AIKERNEL_NEO4J_HTTP_URL", "AIKERNEL_JAEGER_OTLP_GRPC"} <= (
        documented
    )
    env.update(dict.fromkeys(documented, "x"))
    env.update({"PATH": "/bin", "AIKERNEL": "not ours either"})
    assert unknown_env(env, KNOWN) == []


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


def test_cli_beats_env_beats_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(SHOW)
    pytester.makeini(
        "[pytest]\naikernel_startup_timeout = 6\naikernel_images =\n    redis=ini/redis:1\n"
        "    vault=ini/vault:1\n"
    )
    monkeypatch.setenv("AIKERNEL_STARTUP_TIMEOUT", "7")
    monkeypatch.setenv("AIKERNEL_IMAGE_REDIS", "env/redis:1")
    result = pytester.runpytest("-s", "--aikernel-startup-timeout=5")
    result.stdout.fnmatch_lines(["*TIMEOUT=5.0*"])
    # the environment of this run (`eval "$(aikernel up)"`) beats the checked-in file
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(
        ["*TIMEOUT=7.0*", "*IMAGES=[[]('redis', 'env/redis:1'), ('vault', 'ini/vault:1')[]]*"]
    )
    result = pytester.runpytest("-s", "--aikernel-image=redis=cli/redis:1")
    result.stdout.fnmatch_lines(
        ["*IMAGES=[[]('redis', 'cli/redis:1'), ('vault', 'ini/vault:1')[]]*"]
    )
    monkeypatch.delenv("AIKERNEL_STARTUP_TIMEOUT")
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*TIMEOUT=6.0*"])


def test_override_ini_ranks_with_the_command_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SHOW)
    pytester.makeini("[pytest]\naikernel_startup_timeout = 6\n")
    monkeypatch.setenv("AIKERNEL_STARTUP_TIMEOUT", "7")
    result = pytester.runpytest("-s", "-o", "aikernel_startup_timeout=8")
    result.stdout.fnmatch_lines(["*TIMEOUT=8.0*"])
    result = pytester.runpytest(
        "-s", "-o", "aikernel_startup_timeout=8", "--aikernel-startup-timeout=5"
    )
    result.stdout.fnmatch_lines(["*TIMEOUT=5.0*"])
    # also when -o comes from PYTEST_ADDOPTS, which invocation_params.args does not show
    monkeypatch.setenv("PYTEST_ADDOPTS", "-o aikernel_startup_timeout=9")
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*TIMEOUT=9.0*"])


def test_error_names_override_not_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    pytester.makeini("[pytest]\naikernel_startup_timeout = 6\n")
    result = pytester.runpytest("-o", "aikernel_startup_timeout=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-aikernel: -o aikernel_startup_timeout: *'soon'*"])
    assert "ini aikernel_startup_timeout" not in result.stderr.str()
    # a value from the file is still named by the file
    pytester.makeini("[pytest]\naikernel_startup_timeout = later\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines([f"*ini aikernel_startup_timeout ({pytester.path / 'tox.ini'})*"])


# ---- unknown AIKERNEL_* variables: a warning, not a usage error ---------------------------------


def test_unknown_env_var_is_a_warning_in_the_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SHOW)
    monkeypatch.setenv("AIKERNEL_STARTUP_TIMEOUTT", "5")
    monkeypatch.setenv("AIKERNEL_IMAGE_MONGO", "mongo:7")
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*TIMEOUT=120.0*",
            "*warnings summary*",
            "*AikernelConfigWarning: env AIKERNEL_IMAGE_MONGO: unknown service 'mongo'*",
            "*AikernelConfigWarning: env AIKERNEL_STARTUP_TIMEOUTT is not a pytest-aikernel "
            "setting and is ignored; did you mean AIKERNEL_STARTUP_TIMEOUT?",
        ]
    )


def test_help_works_with_an_unknown_env_var(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIKERNEL_IMAGE_MONGO", "mongo:7")
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK


def test_known_variables_give_no_warning(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `eval "$(aikernel up)"` exports, with filterwarnings = error."""
    pytester.makepyfile(SHOW)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    for name, value in {
        "AIKERNEL_MODE": "external",
        "AIKERNEL_VAULT_ADDR": "http://127.0.0.1:1",
        "AIKERNEL_VAULT_TOKEN": "t",
        "AIKERNEL_NEO4J_HTTP_URL": "http://127.0.0.1:2",
        "AIKERNEL_JAEGER_ADMIN_URL": "http://127.0.0.1:3",
        "AIKERNEL_POSTGRES_REPLICA_URL": "postgresql://127.0.0.1:4",
    }.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert "AikernelConfigWarning" not in result.stdout.str()


def test_filterwarnings_error_makes_it_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SHOW)
    monkeypatch.setenv("AIKERNEL_STARTUP_TIMEOUTT", "5")
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-aikernel: env AIKERNEL_STARTUP_TIMEOUTT*did you mean*"])
    # errors for other categories only: the run goes on, the warning is shown
    pytester.makeini("[pytest]\nfilterwarnings = error::DeprecationWarning\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, warnings=1)
    # and the dedicated class can be silenced alone
    pytester.makeini(
        "[pytest]\nfilterwarnings =\n    error\n    ignore::pytest_aikernel.AikernelConfigWarning\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


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


def test_bind_address_is_an_ip_address(tmp_path: Path) -> None:
    s = resolve(raw(tmp_path, env={"AIKERNEL_BIND_ADDRESS": "10.0.0.5"}), KNOWN)
    assert (s.bind_address, s.source_of("bind_address")) == (
        "10.0.0.5",
        "env AIKERNEL_BIND_ADDRESS",
    )
    assert resolve(raw(tmp_path, cli={"bind_address": "auto"}), KNOWN).bind_address is None
    assert resolve(raw(tmp_path, cli={"bind_address": "[::1]"}), KNOWN).bind_address == "::1"
    with pytest.raises(ConfigError, match=r"--aikernel-bind-address.*'my-host' is not an IP"):
        resolve(raw(tmp_path, cli={"bind_address": "my-host"}), KNOWN)


def test_snapshots_on_off(tmp_path: Path) -> None:
    assert resolve(raw(tmp_path), KNOWN).snapshots is True
    s = resolve(raw(tmp_path, env={"AIKERNEL_SNAPSHOTS": "off"}), KNOWN)
    assert (s.snapshots, s.source_of("snapshots")) == (False, "env AIKERNEL_SNAPSHOTS")
    assert resolve(
        raw(tmp_path, cli={"snapshots": "on"}, env={"AIKERNEL_SNAPSHOTS": "off"}), KNOWN
    ).snapshots
    with pytest.raises(ConfigError, match=r"AIKERNEL_SNAPSHOTS.*expected on or off, got 'maybe'"):
        resolve(raw(tmp_path, env={"AIKERNEL_SNAPSHOTS": "maybe"}), KNOWN)
