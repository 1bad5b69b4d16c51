"""Which engine, which host address, which bind address: as the Docker CLI and testcontainers
decide them, without contacting any engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_aikernel.errors import DockerUnavailable
from pytest_aikernel.runtime.engine import endpoint, find, own_container_candidates


def test_default_socket_is_local_and_loopback(tmp_path: Path) -> None:
    engine = find(env={"DOCKER_CONFIG": str(tmp_path)})
    assert engine.endpoint == "unix:///var/run/docker.sock"
    assert (engine.source, engine.local, engine.host, engine.bind) == (
        "default socket",
        True,
        "127.0.0.1",
        "127.0.0.1",
    )
    assert not engine.exposed
    assert "ports bound to 127.0.0.1" in engine.describe()


def test_a_tcp_engine_is_remote_and_binds_its_own_address() -> None:
    engine = find(env={"DOCKER_HOST": "tcp://10.213.77.2:2375"})
    assert (engine.local, engine.host, engine.bind) == (False, "10.213.77.2", "10.213.77.2")
    assert engine.host_source == "DOCKER_HOST"
    assert engine.exposed


def test_localhost_engine_such_as_a_dind_sidecar_binds_loopback() -> None:
    engine = find(env={"DOCKER_HOST": "tcp://localhost:2375"})
    assert (engine.local, engine.host, engine.bind) == (False, "127.0.0.1", "127.0.0.1")
    assert not engine.exposed


def test_an_unresolvable_engine_name_binds_every_address() -> None:
    engine = find(env={"DOCKER_HOST": "tcp://no-such-host.invalid:2375"})
    assert engine.host == "no-such-host.invalid"
    assert engine.bind == "0.0.0.0"


@pytest.mark.parametrize("var", ["TESTCONTAINERS_HOST_OVERRIDE", "TC_HOST"])
def test_host_override_wins(var: str) -> None:
    engine = find(env={"DOCKER_HOST": "tcp://10.213.77.2:2375", var: "192.0.2.7"})
    assert (engine.host, engine.host_source) == ("192.0.2.7", var)
    assert engine.bind == "10.213.77.2"


def test_bind_setting_wins_and_a_specific_address_is_where_services_are() -> None:
    engine = find("10.1.2.3", "--aikernel-bind-address", env={})
    assert (engine.bind, engine.bind_source) == ("10.1.2.3", "--aikernel-bind-address")
    assert (engine.host, engine.host_source) == ("10.1.2.3", "bind address")
    every = find("0.0.0.0", "env AIKERNEL_BIND_ADDRESS", env={})
    assert (every.bind, every.host) == ("0.0.0.0", "127.0.0.1")
    assert every.exposed


def _context(tmp_path: Path, name: str, host: str | None) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": name}))
    meta = tmp_path / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    if host is not None:
        meta.joinpath("meta.json").write_text(
            json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}})
        )


def test_current_docker_context_is_used(tmp_path: Path) -> None:
    _context(tmp_path, "remote", "tcp://10.9.8.7:2375")
    assert endpoint({"DOCKER_CONFIG": str(tmp_path)}) == (
        "tcp://10.9.8.7:2375",
        "docker context 'remote'",
    )
    # DOCKER_HOST beats the context, as for the Docker CLI
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_HOST": "unix:///tmp/x.sock"}
    assert endpoint(env) == ("unix:///tmp/x.sock", "DOCKER_HOST")


def test_docker_context_variable_beats_config(tmp_path: Path) -> None:
    _context(tmp_path, "remote", "tcp://10.9.8.7:2375")
    other = tmp_path / "contexts" / "meta" / hashlib.sha256(b"colima").hexdigest()
    other.mkdir(parents=True)
    other.joinpath("meta.json").write_text(
        json.dumps({"Endpoints": {"docker": {"Host": "unix:///root/.colima/docker.sock"}}})
    )
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "colima"}
    assert endpoint(env)[0] == "unix:///root/.colima/docker.sock"
    assert find(env=env).local


def test_a_broken_context_is_a_clear_error(tmp_path: Path) -> None:
    _context(tmp_path, "gone", None)
    with pytest.raises(DockerUnavailable, match=r"docker context 'gone'.*docker context use"):
        endpoint({"DOCKER_CONFIG": str(tmp_path)})


def test_default_context_means_the_default_socket(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "default"}))
    assert endpoint({"DOCKER_CONFIG": str(tmp_path)})[1] == "default socket"


def test_own_container_candidates_are_container_ids() -> None:
    for candidate in own_container_candidates():
        assert all(c in "0123456789abcdef" for c in candidate)
