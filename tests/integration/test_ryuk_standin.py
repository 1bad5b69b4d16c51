"""The Ryuk stand-in (``tests/images/ryuk``) on the real engine, alone and under testcontainers.

Needs ``RYUK_CONTAINER_IMAGE`` (``eval "$(tests/images/build ryuk)"``) and the base stand-in
image, whose ``sleep`` the reapable containers run. Every port is published on 127.0.0.1 only,
and testcontainers runs with ``TESTCONTAINERS_CONNECTION_MODE=docker_host``: nothing here talks
to a bridge address.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator

import docker
import pytest

RYUK_IMAGE = os.environ.get("RYUK_CONTAINER_IMAGE", "")
BASE_IMAGE = "aikernel-standin/base:bookworm"
#: on every container and network these tests create, for the cleanup
TEST_LABEL = "aikernel.test.ryuk-standin"

pytestmark = pytest.mark.skipif(
    not RYUK_IMAGE,
    reason='RYUK_CONTAINER_IMAGE is not set (the ryuk stand-in image: eval "$(tests/images/build ryuk)")',
)


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    for image in (RYUK_IMAGE, BASE_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            client.close()
            pytest.skip(f"image {image} is not in the local engine (tests/images/build)")
    yield client
    client.close()


@pytest.fixture
def run_id(engine: docker.DockerClient) -> Iterator[str]:
    """A random id; every container, network, volume and image labelled with it is removed
    afterwards."""
    rid = uuid.uuid4().hex[:12]
    yield rid
    selector = {"label": f"{TEST_LABEL}={rid}"}
    for container in engine.containers.list(all=True, ignore_removed=True, filters=selector):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True, v=True)
    for network in engine.networks.list(filters=selector):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            network.remove()
    for volume in engine.volumes.list(filters=selector):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            volume.remove(force=True)
    for image in engine.images.list(filters=selector):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            engine.images.remove(image.id, force=True)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 50 ms; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def start_ryuk(
    engine: docker.DockerClient, run_id: str, **env: str
) -> tuple[docker.models.containers.Container, int]:
    """The stand-in with the engine's socket, port 8080 on an ephemeral 127.0.0.1 port; ready."""
    container = engine.containers.run(
        RYUK_IMAGE,
        detach=True,
        environment=env,
        labels={TEST_LABEL: run_id},
        ports={"8080/tcp": ("127.0.0.1",)},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
    )
    wait_until(lambda: b" Started!" in container.logs(), 15, "ryuk logs ' Started!'")
    container.reload()
    binding = container.ports["8080/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    return container, int(binding["HostPort"])


def send_filters(port: int, *lines: str) -> socket.socket:
    """A client connection that sent ``lines`` and got an ``ACK`` for each; left open."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    answers = b""
    for line in lines:
        conn.sendall(line.encode() + b"\r\n")
        while answers.count(b"\n") < lines.index(line) + 1:
            chunk = conn.recv(64)
            assert chunk, f"connection closed before the ACK of {line!r}"
            answers += chunk
    assert answers == b"ACK\n" * len(lines)
    return conn


def exists(engine: docker.DockerClient, kind: str, ident: str) -> bool:
    collection = {
        "container": engine.containers,
        "network": engine.networks,
        "volume": engine.volumes,
        "image": engine.images,
    }[kind]
    try:
        collection.get(ident)
    except docker.errors.NotFound:
        return False
    return True


def sleeper(
    engine: docker.DockerClient, run_id: str, labels: dict[str, str], network: str | None = None
) -> docker.models.containers.Container:
    return engine.containers.run(
        BASE_IMAGE,
        ["sleep", "300"],
        detach=True,
        labels={TEST_LABEL: run_id, **labels},
        network=network,
    )


def finished(container: docker.models.containers.Container, timeout: float = 30) -> tuple[int, str]:
    """Exit code and log of the ryuk container once it has exited by itself."""
    result = container.wait(timeout=timeout)
    return result["StatusCode"], container.logs().decode()


def test_reaps_matching_containers_and_networks(engine: docker.DockerClient, run_id: str) -> None:
    key, both_a, both_b = f"{TEST_LABEL}.reap", f"{TEST_LABEL}.a", f"{TEST_LABEL}.b"
    ryuk, port = start_ryuk(engine, run_id, RYUK_RECONNECTION_TIMEOUT="1s")
    # a filter set per line: one label; two labels (both must match), %3D-encoded
    conn = send_filters(
        port, f"label={key}={run_id}", f"label={both_a}%3D{run_id}&label={both_b}%3D1"
    )

    net = engine.networks.create(f"ryuk-standin-{run_id}", labels={TEST_LABEL: run_id, key: run_id})
    other_net = engine.networks.create(f"ryuk-standin-{run_id}-keep", labels={TEST_LABEL: run_id})
    volume = engine.volumes.create(
        f"ryuk-standin-{run_id}", labels={TEST_LABEL: run_id, key: run_id}
    )
    other_volume = engine.volumes.create(f"ryuk-standin-{run_id}-keep", labels={TEST_LABEL: run_id})
    # an image with the label (Ryuk's README: containers, networks, volumes and images)
    image, _ = engine.images.build(
        fileobj=io.BytesIO(f"FROM {BASE_IMAGE}\n".encode()),
        tag=f"aikernel-test/ryuk-standin:{run_id}",
        labels={TEST_LABEL: run_id, key: run_id},
        pull=False,
        rm=True,
    )
    # on the labelled network: its removal has to wait until the container has left it
    reaped = [
        sleeper(engine, run_id, {key: run_id}, network=net.name),
        sleeper(engine, run_id, {key: run_id}),
        sleeper(engine, run_id, {both_a: run_id, both_b: "1"}),
    ]
    kept = [
        sleeper(engine, run_id, {}),
        sleeper(engine, run_id, {key: "another-value"}),
        sleeper(engine, run_id, {both_a: run_id}),  # only one of the two labels
    ]

    time.sleep(1.5)  # longer than the reconnection timeout, but a client is still connected
    assert all(exists(engine, "container", c.id) for c in reaped)
    conn.close()
    took = wait_until(
        lambda: (
            not any(exists(engine, "container", c.id) for c in reaped)
            and not exists(engine, "network", net.id)
            and not exists(engine, "volume", volume.id)
            and not exists(engine, "image", image.id)
        ),
        20,
        "labelled containers, network, volume and image removed",
    )
    print(f"reaped {took:.2f} s after the client disconnected (RYUK_RECONNECTION_TIMEOUT=1s)")
    assert 0.9 <= took < 10
    code, logs = finished(ryuk)
    print(logs)
    assert code == 0
    assert "removed 3 container(s), 1 network(s), 1 volume(s), 1 image(s)" in logs
    assert all(exists(engine, "container", c.id) for c in kept)
    assert exists(engine, "network", other_net.id)
    assert exists(engine, "volume", other_volume.id)
    assert exists(engine, "image", BASE_IMAGE)


def test_reconnect_postpones_reaping(engine: docker.DockerClient, run_id: str) -> None:
    key = f"{TEST_LABEL}.reap"
    ryuk, port = start_ryuk(engine, run_id, RYUK_RECONNECTION_TIMEOUT="1s")
    target = sleeper(engine, run_id, {key: run_id})
    send_filters(port, f"label={key}={run_id}").close()
    time.sleep(0.3)
    second = send_filters(port, f"label={key}={run_id}")  # the same filter again: ACK too
    time.sleep(2.5)  # 2.8 s after the first client left
    assert exists(engine, "container", target.id), "reaped although a client had come back"
    ryuk.reload()
    assert ryuk.status == "running"
    second.close()
    took = wait_until(lambda: not exists(engine, "container", target.id), 20, "container removed")
    print(f"reaped {took:.2f} s after the second client disconnected")
    assert 0.9 <= took < 10
    code, logs = finished(ryuk)
    assert code == 0, logs
    assert "removed 1 container(s)" in logs


def test_network_removal_is_retried(engine: docker.DockerClient, run_id: str) -> None:
    """A network that still has a container (here one the filter does not match) cannot be
    removed; the stand-in tries again every RYUK_CHANGES_RETRY_INTERVAL until it can."""
    key = f"{TEST_LABEL}.reap"
    ryuk, port = start_ryuk(engine, run_id, RYUK_RECONNECTION_TIMEOUT="1s", RYUK_VERBOSE="true")
    net = engine.networks.create(f"ryuk-standin-{run_id}", labels={TEST_LABEL: run_id, key: run_id})
    blocker = sleeper(engine, run_id, {}, network=net.name)
    send_filters(port, f"label={key}={run_id}").close()
    wait_until(
        lambda: b"removing network" in ryuk.logs() and b"failed" in ryuk.logs(),
        20,
        "a first, refused removal of the network",
    )
    assert exists(engine, "network", net.id)
    blocker.remove(force=True, v=True)
    took = wait_until(lambda: not exists(engine, "network", net.id), 20, "network removed")
    assert took < 5
    code, logs = finished(ryuk)
    assert code == 0, logs
    assert "removed 0 container(s), 1 network(s), 0 volume(s), 0 image(s)" in logs


def test_prunes_and_exits_without_any_client(engine: docker.DockerClient, run_id: str) -> None:
    start = time.monotonic()
    ryuk, _ = start_ryuk(engine, run_id, RYUK_CONNECTION_TIMEOUT="1s")
    code, logs = finished(ryuk)
    assert code == 0, logs
    assert time.monotonic() - start < 10
    assert "first connection" in logs
    assert "removed 0 container(s), 0 network(s), 0 volume(s), 0 image(s)" in logs


def test_sigterm_prunes_when_the_last_client_leaves(
    engine: docker.DockerClient, run_id: str
) -> None:
    """The documented RYUK_SHUTDOWN_TIMEOUT behaviour, as README.md reads it: after SIGTERM no
    new connections, and the prune starts once the connected clients have left, without
    waiting for the reconnection timeout."""
    key = f"{TEST_LABEL}.reap"
    ryuk, port = start_ryuk(engine, run_id, RYUK_RECONNECTION_TIMEOUT="60s")
    target = sleeper(engine, run_id, {key: run_id})
    conn = send_filters(port, f"label={key}={run_id}")
    ryuk.kill(signal="SIGTERM")
    wait_until(lambda: b"shutdown requested" in ryuk.logs(), 10, "ryuk logs the shutdown request")
    ryuk.reload()
    assert ryuk.status == "running"
    assert exists(engine, "container", target.id)
    conn.close()
    took = wait_until(lambda: not exists(engine, "container", target.id), 20, "container removed")
    assert took < 10, "waited for the reconnection timeout after SIGTERM"
    code, logs = finished(ryuk)
    assert code == 0, logs


TESTCONTAINERS_CHILD = textwrap.dedent(
    """
    import sys, time
    from testcontainers.core.container import DockerContainer, Reaper
    from testcontainers.core.labels import SESSION_ID

    Reaper.get_instance()
    reaper = Reaper._container.get_wrapped_container()
    container = DockerContainer(sys.argv[1]).with_command("sleep 300")
    container.with_kwargs(labels={sys.argv[2]: sys.argv[3]}).start()
    print(SESSION_ID, reaper.id, container.get_wrapped_container().id, flush=True)
    time.sleep(300)
    """
)


def test_testcontainers_uses_the_standin(engine: docker.DockerClient, run_id: str) -> None:
    env = {
        **os.environ,
        "RYUK_CONTAINER_IMAGE": RYUK_IMAGE,
        "TESTCONTAINERS_RYUK_DISABLED": "false",
        "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
        "RYUK_RECONNECTION_TIMEOUT": "1s",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", TESTCONTAINERS_CHILD, BASE_IMAGE, TEST_LABEL, run_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper_id = ""
    try:
        line = child.stdout.readline() if child.stdout else ""
        if not line:
            child.wait(timeout=30)
            pytest.fail(
                f"testcontainers child failed:\n{child.stderr.read() if child.stderr else ''}"
            )
        session_id, reaper_id, container_id = line.split()
        container = engine.containers.get(container_id)
        assert container.labels["org.testcontainers.session-id"] == session_id
        reaper = engine.containers.get(reaper_id)
        assert reaper.image.tags == [RYUK_IMAGE]
        # the reaper logs the filter right after it read it: poll, the log may lag under load
        deadline = time.monotonic() + 15
        while b"adding filter" not in reaper.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b"adding filter" in reaper.logs()

        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        took = wait_until(
            lambda: not exists(engine, "container", container_id), 20, "session container removed"
        )
        print(f"session container reaped {took:.2f} s after SIGKILL of its process")
        assert took < 10
        # auto_remove: the reaper goes away by itself once done
        wait_until(lambda: not exists(engine, "container", reaper_id), 20, "reaper container gone")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()
        if reaper_id:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                engine.containers.get(reaper_id).remove(force=True, v=True)
