"""Integration tests: a real Docker engine and the images the README's test command builds."""

from __future__ import annotations

import time
from collections import Counter
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


def run_once(client: docker.DockerClient, image: str, command: Any = None, **kwargs: Any) -> bytes:
    """Run a container of ``image`` to its end and return its output; the container is removed
    with its anonymous volumes (docker-py's ``run(remove=True)`` leaves those of the image's
    ``VOLUME`` paths on the engine). A non-zero exit fails the test with the output."""
    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        code = container.wait(timeout=120).get("StatusCode")
        output: bytes = container.logs()
    finally:
        container.remove(force=True, v=True)
    assert code == 0, f"{image} exited with {code}: {output.decode(errors='replace')}"
    return output


# ---- the suite leaves no anonymous volume behind ------------------------------------------------

#: the label newer engines give an anonymous volume (20.10 gives it none)
_ANONYMOUS = "com.docker.volume.anonymous"
#: [test id, start, end] of each test run so far, in wall-clock seconds (end None while it runs:
#: the session's last test is still running when the check below runs in its teardown)
_WINDOWS: list[list[Any]] = []


@pytest.hookimpl(hookwrapper=True)  # the old style: pytest 7.4 has no wrapper=True
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    window = [item.nodeid, time.time(), None]
    _WINDOWS.append(window)
    yield
    window[2] = time.time()


def dangling_anonymous(client: docker.DockerClient) -> dict[str, str]:
    """name -> creation time of each anonymous volume that no container uses."""
    found = {}
    for volume in client.volumes.list(filters={"dangling": True}):
        labels = volume.attrs.get("Labels") or {}
        if set(labels) <= {_ANONYMOUS}:
            found[volume.name] = str(volume.attrs.get("CreatedAt", ""))
    return found


def _created_by(created: str) -> str:
    """The test that ran when a volume was made (its ``CreatedAt``, RFC 3339)."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "?"
    for nodeid, began, ended in _WINDOWS:
        if began - 1 <= when <= (time.time() if ended is None else ended) + 1:
            return nodeid
    return "between tests"


@pytest.fixture(scope="session", autouse=True)
def no_volume_left_behind(docker_api: docker.DockerClient) -> Iterator[None]:
    """Fails the session when its containers left anonymous volumes (the images' ``VOLUME``
    paths) on the engine: every removal must take them along. Waits a little for removals
    that run in the background."""
    before = {v.name for v in docker_api.volumes.list()}
    yield
    deadline = time.monotonic() + 30
    while True:
        left = {n: c for n, c in dangling_anonymous(docker_api).items() if n not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    by_test = Counter(_created_by(created) for created in left.values())
    if left:
        pytest.fail(
            f"{len(left)} anonymous volumes (of images' VOLUME paths) were left on the engine "
            "after their containers were removed; made during: "
            + "; ".join(f"{test} ({n})" for test, n in sorted(by_test.items()))
            + f". Remove containers with v=True. Volumes: {', '.join(sorted(left))}",
            pytrace=False,
        )
