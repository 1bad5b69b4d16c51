"""A plain stack gets its network only when something needs it.

Services that talk to no other service of the stack start on the engine's default bridge (no
network to make, no name server per container). The network is made, and every container put on
it under its alias, once a service that reaches others starts (a replica, Kafka, Kibana,
Prometheus, Grafana, Toxiproxy), or once someone reads ``stack.runtime.network_name`` to put a
container of their own on it. Published ports and open connections stay as they were.
"""

from __future__ import annotations

import dataclasses

import docker
import pytest

from pytest_aikernel import Settings, Stack
from pytest_aikernel.runtime.docker import LABEL_SESSION

from .conftest import networks_of, run_once


def _networks(client: docker.DockerClient, stack: Stack, service: str) -> dict[str, list[str]]:
    """The networks of ``service``'s container, with its aliases on each."""
    raw = client.containers.get(stack.runtime.container_name(service))
    nets = raw.attrs["NetworkSettings"]["Networks"] or {}
    return {name: list(net.get("Aliases") or []) for name, net in nets.items()}


@pytest.fixture
def plain(aikernel_settings: Settings):
    stack = Stack(dataclasses.replace(aikernel_settings, snapshots=False))
    try:
        yield stack
    finally:
        stack.stop()


def test_services_that_reach_no_other_start_without_a_network_until_a_replica_needs_one(
    plain: Stack, docker_api: docker.DockerClient
) -> None:
    plain.start(["postgres", "redis", "vault"])
    session = plain.session_id
    assert networks_of(docker_api, session) == []
    for service in ("postgres", "redis", "vault"):
        assert list(_networks(docker_api, plain, service)) == ["bridge"], service
    pg = plain["postgres"]
    conn = pg.connect()  # open across the growth below
    conn.execute("CREATE TABLE grown (n int)")
    conn.commit()
    port_before = pg.port
    cache = plain["redis"].client()
    cache.set("before", "1")

    plain.start(["postgres-replica"])  # reaches the primary as `postgres`: the network now
    assert networks_of(docker_api, session) == [f"pytest-aikernel-{session}"]
    for service in ("postgres", "redis", "vault"):
        nets = _networks(docker_api, plain, service)
        assert set(nets) == {"bridge", f"pytest-aikernel-{session}"}, (service, nets)
        assert service in nets[f"pytest-aikernel-{session}"], (service, nets)
    assert list(_networks(docker_api, plain, "postgres-replica")) == [f"pytest-aikernel-{session}"]
    # the connection opened before still works, on the same published port
    conn.execute("INSERT INTO grown VALUES (1)")
    conn.commit()
    conn.close()
    assert plain["postgres"].port == port_before
    assert cache.get("before") == b"1"
    plain["postgres-replica"].wait_for_replication(timeout=20)
    with plain["postgres-replica"].connect() as replica:
        assert replica.execute("SELECT n FROM grown").fetchall() == [(1,)]


def test_reading_the_network_name_makes_it_and_puts_the_stack_on_it(
    plain: Stack, docker_api: docker.DockerClient
) -> None:
    plain.start(["redis"])
    assert networks_of(docker_api, plain.session_id) == []
    network = plain.runtime.network_name  # a user about to start a container of their own
    assert network == f"pytest-aikernel-{plain.session_id}"
    assert "redis" in _networks(docker_api, plain, "redis")[network]
    redis = plain["redis"]
    # a container of the user's on that network reaches the service by its alias
    image = docker_api.containers.get(plain.runtime.container_name("redis")).image.id
    out = run_once(
        docker_api,
        image,
        [
            "redis-cli",
            "--no-auth-warning",
            "-h",
            redis.internal_host,
            "-p",
            str(redis.internal_port),
        ]
        + (["-a", redis.password] if redis.password else [])
        + ["PING"],
        entrypoint=[],
        network=network,
        labels={LABEL_SESSION: plain.session_id},
    )
    assert b"PONG" in out


def test_a_service_on_the_default_bridge_is_cut_off_and_comes_back_on_its_port(
    plain: Stack, docker_api: docker.DockerClient
) -> None:
    import redis as redis_lib

    plain.start(["redis"])
    redis = plain["redis"]
    assert list(_networks(docker_api, plain, "redis")) == ["bridge"]
    redis.disconnect()
    assert _networks(docker_api, plain, "redis") == {}
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        redis.client(socket_connect_timeout=2, socket_timeout=2).ping()
    redis.reconnect()
    assert list(_networks(docker_api, plain, "redis")) == ["bridge"]
    assert redis.client().ping()
    # with the network made meanwhile, a cut takes it off both, and puts it back on both
    network = plain.runtime.network_name
    redis.disconnect()
    assert _networks(docker_api, plain, "redis") == {}
    redis.reconnect()
    nets = _networks(docker_api, plain, "redis")
    assert set(nets) == {"bridge", network} and "redis" in nets[network], nets
    assert redis.client().ping()
