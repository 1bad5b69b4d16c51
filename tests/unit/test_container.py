"""The service under test without an engine: arguments, waits, in-network variables, fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_aikernel import ContainerArgumentError, Settings, Wait
from pytest_aikernel.container import _arguments, _default_name, as_wait
from pytest_aikernel.runtime import Running
from pytest_aikernel.secrets import SecretStore
from pytest_aikernel.services import StackContext, registry, start_order


def args(**kwargs: Any) -> Any:
    given: dict[str, Any] = {
        "image": "registry.example/api:1.4",
        "env": None,
        "ports": (8080,),
        "wait": None,
        "command": None,
        "name": None,
        "stack_env": True,
        "timeout": 60.0,
        **kwargs,
    }
    return _arguments(**given)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, Wait.running()),
        (8080, Wait.port(8080)),
        ("/health", Wait.http("/health")),
        ("log:listening on :\\d+", Wait.log("listening on :\\d+")),
        (Wait.http("/ready", port=9000, status=204), Wait("http", 9000, "/ready", 204)),
    ],
)
def test_the_short_forms_of_wait(given: Any, expected: Wait) -> None:
    assert as_wait(given) == expected


@pytest.mark.parametrize(
    ("wait", "message"),
    [
        (3.5, r"wait=3\.5: expected None .* or a Wait \(Wait\.http"),
        (True, r"wait=True: expected None"),
        ("health", r"wait='health': expected None"),
        (Wait, r"expected None"),
    ],
)
def test_a_wait_of_the_wrong_kind_is_refused(wait: Any, message: str) -> None:
    with pytest.raises(ContainerArgumentError, match=message):
        args(wait=wait)


def test_waits_check_their_own_arguments() -> None:
    with pytest.raises(ContainerArgumentError, match=r"Wait\.http\('health'\): the path starts"):
        Wait.http("health")
    with pytest.raises(ContainerArgumentError, match=r"Wait\.port: 0 is not a TCP port"):
        Wait.port(0)
    with pytest.raises(ContainerArgumentError, match=r"status=700"):
        Wait.http("/", status=700)
    with pytest.raises(ContainerArgumentError, match=r"not a valid regular expression"):
        Wait.log("(unclosed")
    assert str(Wait.http("/health")) == (
        "wait for HTTP GET /health on the first port to answer 2xx/3xx"
    )
    assert str(Wait.http("/h", port=81, status=200)) == "wait for HTTP GET /h on 81 to answer 200"
    assert str(Wait.port(8080)) == "wait for TCP port 8080"
    assert str(Wait.log("ready")) == "wait for a log line matching 'ready'"


def test_a_wait_must_use_a_published_port() -> None:
    with pytest.raises(ContainerArgumentError, match=r"port 9000 is not in ports=\(8080,\)"):
        args(wait=9000)
    with pytest.raises(ContainerArgumentError, match=r"port 9000 is not in ports=\(8080,\)"):
        args(wait=Wait.http("/", port=9000))
    with pytest.raises(ContainerArgumentError, match=r"publishes no port; pass ports=\(8080,\)"):
        args(ports=(), wait="/health")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": ""}, r"image='': an image reference"),
        ({"image": "a b"}, r"image='a b'"),
        ({"ports": 8080}, r"ports=8080: a sequence of container ports, e\.g\. ports=\(8080,\)"),
        ({"ports": (8080, 70000)}, r"70000 is not a TCP port number"),
        ({"ports": (8080, 8080)}, r"listed twice"),
        ({"env": {"PORT": 8080}}, r"env\['PORT'\]: 8080 is a int; .* \(str\(8080\)\)"),
        ({"env": ["A=1"]}, r"env=\['A=1'\]: a mapping"),
        ({"name": "My_Api"}, r"name='My_Api': the network alias is one DNS label"),
        ({"name": "postgres"}, r"name='postgres' is the network alias of the stack's postgres"),
        ({"command": []}, r"command=\[\] is empty"),
        ({"command": ["sh", 1]}, r"a string or a sequence of strings"),
        ({"stack_env": "yes"}, r"stack_env='yes': True or False"),
        ({"timeout": 0}, r"timeout=0: seconds, more than 0"),
    ],
)
def test_bad_arguments_are_quoted(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerArgumentError, match=message):
        args(**kwargs)


def test_arguments_are_normalised_and_keyed_without_the_timeout() -> None:
    one = args(command="python3 -u /app.py --name 'a b'", env={"B": "2", "A": "1"})
    assert one.command == ("python3", "-u", "/app.py", "--name", "a b")
    assert one.env == (("A", "1"), ("B", "2"))
    same = args(command=["python3", "-u", "/app.py", "--name", "a b"], env={"A": "1", "B": "2"})
    assert one.key == same.key
    assert one.key == args(command=one.command, env=dict(one.env), timeout=5).key
    assert one.key != args(command="python3 -u /app.py --name 'a b'").key


def test_default_names_are_unique_aliases_from_the_image() -> None:
    name = _default_name("registry.example:5000/team/My_API:1.4")
    assert name.startswith("my-api-") and len(name) == len("my-api-") + 6
    assert _default_name("x@sha256:" + "0" * 64).startswith("x-")
    assert _default_name("registry.example/team/api:1") != _default_name(
        "registry.example/team/api:1"
    )


# ---- in-network variables ------------------------------------------------------------------------


def public_objects() -> dict[str, Any]:
    """Every service's public object, as the stack would expose it (nothing runs)."""
    ctx = StackContext(settings=Settings(), secrets=SecretStore(), services=frozenset(registry()))
    for name in start_order(registry()):
        svc = registry()[name]
        running = Running(
            service=name,
            image="img",
            container_id="c" * 64,
            host="127.0.0.1",
            ports={port: 40000 + i for i, port in enumerate(svc.ports)},
            internal_host=name,
            started_at=0.0,
        )
        ctx.running[name] = running
        ctx.exposed[name] = svc.expose(ctx, running)
    return ctx.exposed


def test_every_service_exports_its_in_network_address_under_the_external_names() -> None:
    for name, obj in public_objects().items():
        svc = registry()[name]
        external = svc.external_exports(obj)
        internal = svc.internal_exports(obj)
        assert set(internal) == set(external), name
        assert svc.external_env in internal, name
        for key, value in internal.items():
            assert "127.0.0.1" not in value and ":4000" not in value, (name, key, value)
        assert f"{name}:" in internal[svc.external_env], (name, internal)


def test_in_network_addresses_keep_credentials_and_use_container_ports() -> None:
    objects = public_objects()
    reg = registry()
    redis = objects["redis"]
    assert reg["redis"].internal_exports(redis) == {"AIKERNEL_REDIS_URL": redis.internal_url}
    postgres = objects["postgres"]
    assert reg["postgres"].internal_exports(postgres) == {
        "AIKERNEL_POSTGRES_URL": postgres.internal_dsn()
    }
    assert reg["kafka"].internal_exports(objects["kafka"]) == {
        "AIKERNEL_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"
    }
    vault = reg["vault"].internal_exports(objects["vault"])
    assert vault["AIKERNEL_VAULT_ADDR"] == "http://vault:8200"
    assert vault["AIKERNEL_VAULT_TOKEN"] == objects["vault"].token
    neo4j = reg["neo4j"].internal_exports(objects["neo4j"])
    assert neo4j["AIKERNEL_NEO4J_URL"].endswith("@neo4j:7687")
    assert neo4j["AIKERNEL_NEO4J_HTTP_URL"] == "http://neo4j:7474"
    assert reg["jaeger"].internal_exports(objects["jaeger"])["AIKERNEL_JAEGER_OTLP_GRPC"] == (
        "http://jaeger:4317"
    )


# ---- the fixtures, without an engine -------------------------------------------------------------


def test_the_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    text = result.stdout.str()
    assert "aikernel_container -- " in text
    assert "Start your service's own image on the stack's network" in text
    assert "aikernel_session_container [session scope] -- " in text


def test_no_engine_skips_or_fails_as_docker_missing_says(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_api(aikernel_container):
            aikernel_container("registry.example/api:1.4")
        """
    )
    skipped = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*no Docker engine answered*--aikernel-docker-missing=skip*"])
    failed = pytester.runpytest("-p", "no:cacheprovider", "--aikernel-docker-missing", "fail")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*no Docker engine answered*failing because*=fail*"])
