"""Integration tests: a real Docker engine and the images the README's test command builds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from pytest_aikernel.runtime.docker import LABEL_SERVICE, LABEL_SESSION

#: the services of the foundation; tests that look at the whole stack name them explicitly,
#: since a bare ``aikernel_stack`` means every service (Kibana and Grafana have no stand-in)
FOUNDATION = pytest.mark.aikernel_stack(
    "postgres", "postgres-replica", "redis", "redis-replica", "vault"
)


def read_kv(vault, path: str) -> dict:
    """A KV v2 secret under ``secret/``."""
    return vault.client().secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]


def image_present(image: str) -> bool:
    """Whether ``image`` is in the local engine (nothing is pulled)."""
    client = docker.from_env()
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_api() -> Iterator[docker.DockerClient]:
    """A docker-py client on the engine the plugin uses."""
    client = docker.from_env()
    yield client
    client.close()


def containers_of(client: docker.DockerClient, session: str) -> dict[str, str]:
    """service -> container status, for every container of a pytest-aikernel session."""
    found = client.containers.list(
        all=True, ignore_removed=True, filters={"label": f"{LABEL_SESSION}={session}"}
    )
    return {c.labels[LABEL_SERVICE]: c.status for c in found}


def removed(client: docker.DockerClient, session: str, timeout: float = 30) -> dict[str, Any]:
    """What is left of ``session`` (containers by service, and networks) once it is gone or
    ``timeout`` passed: a plain session that Ryuk holds is removed by a process of its own
    after pytest exits (docs/lifecycle.md), so a check right after the run would race it."""
    deadline = time.monotonic() + timeout
    while True:
        left: dict[str, Any] = dict(containers_of(client, session))
        nets = networks_of(client, session)
        if nets:
            left["networks"] = nets
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def networks_of(client: docker.DockerClient, session: str) -> list[str]:
    return [n.name for n in client.networks.list(filters={"label": f"{LABEL_SESSION}={session}"})]
