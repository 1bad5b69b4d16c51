"""Runtimes start container specifications somewhere and say where they run.

A runtime knows nothing about any particular service: it gets a :class:`ContainerSpec` and returns a
:class:`Running`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ContainerSpec:
    """What to run for one service: built by the service module, started by a runtime."""

    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    #: container port -> a fixed host port on 127.0.0.1, for servers that must advertise the
    #: address they are reached at (Kafka); other ports get an ephemeral host port
    host_ports: Mapping[int, int] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    user: str | None = None
    #: mount point -> tmpfs options ("" for defaults, e.g. "mode=1777")
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    #: path in the container -> (content, mode); copied in before the container starts
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)
    #: extra /etc/hosts entries, e.g. {"host.docker.internal": "host-gateway"}
    extra_hosts: Mapping[str, str] = field(default_factory=dict)
    #: memory the service needs (MiB), from its settings (heap sizes): a Kubernetes pod's
    #: memory request; None for services without a memory setting
    memory_mb: int | None = None
    #: volume name -> mount path: named volumes that outlive the stack, caches of what
    #: containers of one image compute once (JVM class-data archives). A runtime keeps one per
    #: name and image id, writable by any user of the container; what is in it must never be
    #: needed for a start (it may be empty, stale or damaged)
    volumes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Running:
    """Where a started service runs, from the test process and from inside the stack network."""

    service: str
    image: str
    container_id: str
    #: host side: always the loopback address, never "localhost"
    host: str
    #: container port -> host port (published on 127.0.0.1)
    ports: Mapping[int, int]
    #: inside the stack network: the service's network alias
    internal_host: str
    #: time.monotonic() when the container was started
    started_at: float

    def host_port(self, container_port: int) -> int:
        return self.ports[container_port]


__all__ = ["ContainerSpec", "Running"]
