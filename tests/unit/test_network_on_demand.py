"""When a plain stack's Docker runtime makes its network (no engine: the client is a fake)."""

from __future__ import annotations

import threading
from typing import Any

import docker.errors
import pytest

from pytest_aikernel.runtime.docker import DockerRuntime


class FakeApi:
    def __init__(self, bridge: bool) -> None:
        self.bridge = bridge

    def inspect_network(self, name: str) -> dict[str, Any]:
        if name == "bridge" and self.bridge:
            return {"Name": "bridge"}
        raise docker.errors.NotFound(f"network {name} not found")


class FakeClient:
    def __init__(self, bridge: bool) -> None:
        self.api = FakeApi(bridge)


def _runtime(monkeypatch: pytest.MonkeyPatch, *, bridge: bool) -> tuple[DockerRuntime, Any]:
    runtime = DockerRuntime("abcdef123456")
    runtime.network_on_demand = True
    runtime._client = FakeClient(bridge)  # type: ignore[assignment]
    made = threading.Event()
    monkeypatch.setattr(runtime, "_attached", lambda: False)
    monkeypatch.setattr(runtime, "create_network", made.set)
    return runtime, made


@pytest.mark.parametrize(
    ("in_network", "bridge", "made"),
    [
        (False, True, False),  # postgres, redis, vault: the default bridge
        (True, True, True),  # a replica, Kafka, Toxiproxy...: the network now
        (False, False, True),  # an engine without its default bridge (dockerd --bridge=none)
    ],
)
def test_a_plain_stack_makes_its_network_only_when_needed(
    monkeypatch: pytest.MonkeyPatch, in_network: bool, bridge: bool, made: bool
) -> None:
    runtime, event = _runtime(monkeypatch, bridge=bridge)
    runtime.prepare_start(in_network)
    assert event.wait(2) is made
    assert runtime._network_wanted is made


def test_a_shared_stack_always_has_its_network(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, event = _runtime(monkeypatch, bridge=True)
    runtime.network_on_demand = False
    runtime.prepare_start(False)
    assert event.wait(2)


def test_the_network_is_named_to_sort_after_the_default_bridge() -> None:
    """Docker's gateway network is the one whose name sorts first: a container on the bridge
    and on the stack network must keep the bridge, with its published ports."""
    name = DockerRuntime("abcdef123456")._network_name
    assert name == "pytest-aikernel-abcdef123456"
    assert sorted([name, "bridge"]) == ["bridge", name]
