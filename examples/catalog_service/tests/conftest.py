"""Two ways to run the service under test, each in the test's own world."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from catalog_service.app import Catalog, make_server
from catalog_service.config import load

ROOT = Path(__file__).resolve().parent.parent
#: the image the Dockerfile starts from; this project's CI sets a locally built Debian image
BASE = os.environ.get("CATALOG_BASE_IMAGE", "debian:bookworm-slim")


def call(url: str, method: str = "GET") -> Any:
    """One JSON request to the service (stack addresses never go through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method), timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="session")
def catalog_image() -> str:
    """The service's image, built from its Dockerfile once per session (per xdist worker)."""
    import docker

    tag = "catalog-service:test"
    client = docker.from_env()
    try:
        client.images.build(path=str(ROOT), tag=tag, buildargs={"BASE": BASE}, rm=True)
    finally:
        client.close()
    # the tag, not this build's image: xdist workers build at once, and on an engine without
    # the layers cached each build makes an image of its own; the last one takes the tag and
    # the others are left without any (seen on a fresh CI machine). They are the same build.
    return tag


@pytest.fixture
def in_process(aikernel_world) -> Iterator[str]:
    """The service in this process, configured like production: Vault address, token, path."""
    env = {**aikernel_world.env(), "CATALOG_VAULT_PATH": aikernel_world.vault_path}
    server = make_server(Catalog(load(env)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def in_container(aikernel_world, aikernel_container, catalog_image: str) -> str:
    """The service's own image on the stack network, reading the world's in-network entries."""
    env = {**aikernel_world.env(internal=True), "CATALOG_VAULT_PATH": aikernel_world.vault_path}
    service = aikernel_container(
        catalog_image, env=env, ports=[8000], wait="/health", stack_env=False
    )
    return service.url


@pytest.fixture(params=["in_process", "in_container"])
def catalog(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """The service under test, both ways: ``catalog(path, method="GET")``."""
    base = request.getfixturevalue(request.param)
    return lambda path, method="GET": call(base + path, method)
