"""Integration tests: a real Docker engine and the images the README's test command builds."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from pytest_aikernel.runtime.docker import LABEL_SERVICE, LABEL_SESSION


@pytest.fixture(scope="session")
def docker_api() -> Iterator[docker.DockerClient]:
    """A docker-py client on the engine the plugin uses."""
    client = docker.from_env()
    yield client
    client.close()


def containers_of(client: docker.DockerClient, session: str) -> dict[str, str]:
    """service -> container status, for every container of a pytest-aikernel session."""
    found = client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session}"})
    return {c.labels[LABEL_SERVICE]: c.status for c in found}


def networks_of(client: docker.DockerClient, session: str) -> list[str]:
    return [n.name for n in client.networks.list(filters={"label": f"{LABEL_SESSION}={session}"})]
