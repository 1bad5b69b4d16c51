"""The Docker runtime: testcontainers starts each spec on the stack's private network.

Everything here is generic: labels, the private network, loopback port publishing, image checks,
logs, removal and the sweeper that removes what dead sessions left behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContainerExited, DockerUnavailable, ImageUnavailable, ServiceError
from . import ContainerSpec, Running

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

LABEL_SERVICE = "pytest-aikernel.service"
LABEL_SESSION = "pytest-aikernel.session"
LABEL_OWNER = "pytest-aikernel.owner"
LOOPBACK = "127.0.0.1"


def _proc_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    """The process that owns a stack: host name, pid and the pid's start time."""

    host: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, start=_proc_start_time(pid))

    def label(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(host=parts[0], pid=int(parts[1]), start=parts[2])

    def is_dead(self) -> bool:
        """True only when this owner surely no longer runs (same host, pid gone or reused)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        current = _proc_start_time(self.pid)
        return bool(self.start and current and current != self.start)


def free_loopback_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (for specs that need a fixed host port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]


def _reachable(host: str, timeout: float) -> str:
    """ "" when something listens at the engine address, else why not (no client is created).

    docker-py leaks a socket when its version negotiation fails, so an absent engine is detected
    here first, with a plain socket that is always closed.
    """
    from urllib.parse import urlparse

    url = urlparse(host)
    try:
        if url.scheme in ("unix", "http+unix"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(url.path)
        elif url.scheme in ("tcp", "http", "https") and url.hostname:
            default = 2376 if url.scheme == "https" else 2375
            with socket.create_connection((url.hostname, url.port or default), timeout=timeout):
                pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return ""


def docker_client(timeout: float = 60.0) -> docker.DockerClient:
    """A client from the environment (DOCKER_HOST or the default socket); DockerUnavailable."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    problem = _reachable(host, min(timeout, 5.0))
    if problem:
        raise DockerUnavailable(
            f"no Docker engine answered at {host} ({problem}). Start Docker (dockerd, Docker "
            "Desktop, colima, podman's docker socket) or point DOCKER_HOST at a running engine."
        )
    import docker

    client = None
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)), max_pool_size=32)
        client.ping()
    except Exception as exc:  # docker raises DockerException, requests errors, OSError...
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        raise DockerUnavailable(
            f"no Docker engine answered at {host} ({_short(exc)}). Start Docker (dockerd, Docker "
            "Desktop, colima, podman's docker socket) or point DOCKER_HOST at a running engine."
        ) from None
    return client


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)  # docker.errors.APIError: the engine's words
    if explanation:
        return f"{type(exc).__name__}: {explanation}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class DockerRuntime:
    """Starts :class:`ContainerSpec` objects as labelled containers on one private network."""

    def __init__(
        self,
        session_id: str,
        owner: Owner | None = None,
        extra_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.session_id = session_id
        self.owner = owner or Owner.current()
        self.extra_labels = dict(extra_labels or {})
        self._client: docker.DockerClient | None = None
        self._network: Any = None  # testcontainers Network
        self._containers: dict[str, Any] = {}  # service -> testcontainers DockerContainer
        self._lock = threading.Lock()

    # ---- engine -------------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def engine_version(self) -> str:
        return str(self.client.version().get("Version", "unknown"))

    def labels(self, service: str | None = None) -> dict[str, str]:
        labels = {
            **self.extra_labels,
            LABEL_SESSION: self.session_id,
            LABEL_OWNER: self.owner.label(),
        }
        if service is not None:
            labels[LABEL_SERVICE] = service
        return labels

    # ---- network ------------------------------------------------------------------------------

    @property
    def network_name(self) -> str:
        return f"aikernel-{self.session_id}"

    def create_network(self) -> None:
        with self._lock:
            if self._network is not None:
                return
            from testcontainers.core.network import Network

            network = Network(docker_network_kw={"labels": self.labels(), "driver": "bridge"})
            network.name = self.network_name
            network.create()
            self._network = network

    def use_network(self, name: str) -> None:
        """Start further containers on an existing network (a stack attached to, not owned)."""

        @dataclass
        class _Existing:
            name: str

            def remove(self) -> None:
                pass

        self._network = _Existing(name)

    def detach(self) -> None:
        """Forget the containers without removing them; close the client."""
        self._containers.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    # ---- containers ---------------------------------------------------------------------------

    def ensure_image(self, service: str, image: str, setting_hint: str) -> None:
        """Raise ImageUnavailable unless ``image`` is local or can be pulled."""
        import docker.errors

        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise ImageUnavailable(
                service, f"{service}: cannot inspect image {image!r}: {_short(exc)}"
            ) from None
        try:
            self.client.images.pull(image)
        except Exception as exc:
            raise ImageUnavailable(
                service,
                f"{service}: image {image!r} is not present locally and could not be pulled "
                f"({_short(exc)}). Pull or build it, or choose another image with {setting_hint}.",
            ) from None

    def start(self, service: str, spec: ContainerSpec) -> Running:
        """Create and start the container for ``service``; ports published on 127.0.0.1."""
        from testcontainers.core.container import DockerContainer

        self.create_network()
        container = DockerContainer(spec.image)
        container.with_network(self._network).with_network_aliases(service)
        for key, value in spec.env.items():
            container.with_env(key, value)
        # ("127.0.0.1",) = loopback only, ephemeral host port (docker-py's port binding form)
        bindings: dict[str, Any] = {
            f"{port}/tcp": (LOOPBACK, spec.host_ports[port])
            if port in spec.host_ports
            else (LOOPBACK,)
            for port in spec.ports
        }
        container.ports = bindings
        if spec.command is not None:
            container.with_command(list(spec.command))
        for path, options in spec.tmpfs.items():
            container.tmpfs[path] = options
        for path, (content, mode) in spec.files.items():
            container.with_copy_into_container(content, path, mode)
        container.with_name(f"aikernel-{self.session_id}-{service}")
        kwargs: dict[str, Any] = {"labels": self.labels(service)}
        if spec.entrypoint is not None:
            kwargs["entrypoint"] = list(spec.entrypoint)
        if spec.user is not None:
            kwargs["user"] = spec.user
        if spec.extra_hosts:
            kwargs["extra_hosts"] = dict(spec.extra_hosts)
        container.with_kwargs(**kwargs)
        self._containers[service] = container
        started = time.monotonic()
        try:
            container.start()
        except Exception as exc:
            hint = ""
            if "ryuk" in str(exc).lower() or "reaper" in str(exc).lower():
                hint = (
                    " testcontainers could not start its Ryuk reaper: set "
                    "TESTCONTAINERS_RYUK_DISABLED=true (pytest-aikernel removes its own "
                    "containers at session end and sweeps those of dead sessions)."
                )
            raise ServiceError(
                service,
                f"{service}: could not start a container from {spec.image!r}: {_short(exc)}.{hint}",
            ) from None
        raw: Container = container.get_wrapped_container()
        raw.reload()
        ports = _published_ports(raw.attrs, spec.ports)
        return Running(
            service=service,
            image=spec.image,
            container_id=str(raw.id),
            host=LOOPBACK,
            ports=ports,
            internal_host=service,
            started_at=started,
        )

    def check_alive(self, running: Running) -> None:
        """Raise ContainerExited when the service's container is no longer running."""
        raw = self._raw(running.service)
        if raw is None:
            return
        try:
            raw.reload()
        except Exception:
            return
        state = raw.attrs.get("State", {})
        if state.get("Running", True):
            return
        raise ContainerExited(
            running.service,
            f"{running.service}: container ({running.image}) exited with code "
            f"{state.get('ExitCode')} before it was ready",
        )

    def put_file(self, service: str, path: str, content: bytes, mode: int = 0o644) -> bool:
        """Write ``content`` at ``path`` in the running container of ``service``."""
        import io
        import tarfile

        raw = self._raw(service)
        if raw is None:
            return False
        folder, _, name = path.rpartition("/")
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
        return bool(raw.put_archive(folder or "/", data.getvalue()))

    def logs(self, service: str, tail: int = 50) -> str:
        raw = self._raw(service)
        if raw is None:
            return ""
        try:
            data: bytes = raw.logs(tail=tail)
        except Exception as exc:
            return f"(logs unavailable: {_short(exc)})"
        return data.decode("utf-8", errors="replace")

    def log_timestamps(self, service: str) -> list[tuple[str, str]]:
        """(RFC3339 timestamp, line) pairs of the container's whole log, for benchmarks."""
        raw = self._raw(service)
        if raw is None:
            return []
        data: bytes = raw.logs(timestamps=True)
        out = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            out.append((stamp, text))
        return out

    def _raw(self, service: str) -> Container | None:
        container = self._containers.get(service)
        if container is None or getattr(container, "_container", None) is None:
            return None
        raw: Container = container.get_wrapped_container()
        return raw

    def remove(self, services: Iterable[str]) -> None:
        for service in list(services):
            container = self._containers.pop(service, None)
            if container is None:
                continue
            with contextlib.suppress(Exception):
                raw = getattr(container, "_container", None)
                if raw is not None:
                    raw.remove(force=True, v=True)

    def close(self) -> None:
        """Remove every container of this runtime and its network."""
        from concurrent.futures import ThreadPoolExecutor

        names = list(self._containers)
        if names:
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                list(pool.map(lambda n: self.remove([n]), names))
        if self._network is not None:
            with contextlib.suppress(Exception):
                self._network.remove()
            self._network = None
        # anything of this session that escaped the bookkeeping (e.g. a start interrupted
        # between create and our record of it)
        if self._client is not None:
            with contextlib.suppress(Exception):
                remove_by_labels(self._client, {LABEL_SESSION: self.session_id})
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


def _published_ports(attrs: dict[str, Any], wanted: Iterable[int]) -> dict[int, int]:
    bindings = attrs.get("NetworkSettings", {}).get("Ports") or {}
    ports: dict[int, int] = {}
    for port in wanted:
        entries = bindings.get(f"{port}/tcp") or []
        for entry in entries:
            if entry.get("HostIp") in (LOOPBACK, "", "0.0.0.0") and entry.get("HostPort"):
                ports[port] = int(entry["HostPort"])
                break
    return ports


def remove_by_labels(client: docker.DockerClient, labels: dict[str, str]) -> int:
    """Remove every container and network carrying all of ``labels``; return the count."""
    filters: dict[str, Any] = {"label": [f"{k}={v}" for k, v in labels.items()]}
    removed = 0
    for container in client.containers.list(all=True, filters=filters):
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)
            removed += 1
    for network in client.networks.list(filters=filters):
        with contextlib.suppress(Exception):
            network.remove()
    return removed


def sweep_dead_sessions(client: docker.DockerClient) -> list[str]:
    """Remove containers and networks of sessions whose owning process is dead on this host.

    Returns the session ids removed. Sessions of live processes, and of other hosts, are left.
    """
    dead: set[str] = set()
    seen: dict[str, bool] = {}
    objects: list[Any] = [
        *client.containers.list(all=True, filters={"label": [LABEL_SESSION]}),
        *client.networks.list(filters={"label": [LABEL_SESSION]}),
    ]
    for obj in objects:
        labels = obj.attrs.get("Labels") or obj.attrs.get("Config", {}).get("Labels") or {}
        session = labels.get(LABEL_SESSION)
        owner_text = labels.get(LABEL_OWNER, "")
        if not session:
            continue
        if owner_text not in seen:
            owner = Owner.parse(owner_text)
            seen[owner_text] = owner is not None and owner.is_dead()
        if seen[owner_text]:
            dead.add(session)
    for session in sorted(dead):
        remove_by_labels(client, {LABEL_SESSION: session})
    return sorted(dead)
