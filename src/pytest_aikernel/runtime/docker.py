"""The Docker runtime: starts each spec through the Docker API on the stack's private network.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContainerExited, DockerUnavailable, ImageUnavailable, ServiceError
from . import ContainerSpec, Running
from .engine import LOOPBACK

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from .engine import Engine

LABEL_SERVICE = "pytest-aikernel.service"
LABEL_SESSION = "pytest-aikernel.session"
LABEL_OWNER = "pytest-aikernel.owner"
LABEL_TMPFS = "pytest-aikernel.tmpfs"
#: snapshot images: ``aikernel-snapshot/<service>:<key>``, labelled with the service, its key,
#: the id of the image it was made from and the plugin version
SNAPSHOT_REPO = "aikernel-snapshot"
#: where a snapshot image keeps the data directories: ``<root><path>``, outside any VOLUME of the
#: service's image (Docker would copy a VOLUME's content into a new volume at every start)
SNAPSHOT_ROOT = "/aikernel-snapshot"
#: the layout of snapshot images; part of every snapshot's key (3: the secrets the seeded state
#: holds are labels, so that a start from it logs in over the network instead of an exec)
SNAPSHOT_FORMAT = 3
LABEL_SNAPSHOT = "pytest-aikernel.snapshot"
LABEL_SNAPSHOT_KEY = "pytest-aikernel.snapshot-key"
LABEL_SNAPSHOT_BASE = "pytest-aikernel.snapshot-base"
#: ``<prefix><secret name>``: a secret of the stack that made the snapshot, held by its data (the
#: role's password); the image is local to the engine, as the containers' environment is
LABEL_SNAPSHOT_SECRET = "pytest-aikernel.snapshot-secret."
#: named cache volumes (ContainerSpec.volumes): ``aikernel-cache-<name>-<12 hex of the image
#: id>``, labelled with the name and the image id; no session label, so they outlive stacks
LABEL_CACHE = "pytest-aikernel.cache"
LABEL_CACHE_IMAGE = "pytest-aikernel.cache-image"


@dataclass(frozen=True)
class ContainerState:
    """What a fault may have changed about a service's container."""

    running: bool
    paused: bool
    #: on the stack network
    connected: bool
    container_id: str
    #: container port -> host port, as published now
    ports: Mapping[int, int]


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


def _boot_id() -> str:
    """The kernel's boot id (a pid is only meaningful within one boot); "" where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip().replace("-", "")[:16]
    except OSError:
        return ""


def _pid_namespace() -> str:
    """The pid namespace of this process ("pid:[4026531836]" -> "4026531836"); "" if unknown."""
    try:
        text = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return "".join(ch for ch in text if ch.isdigit())


@dataclass(frozen=True)
class Owner:
    """The process that owns a stack: where it runs (host name, boot id, pid namespace), its pid
    and the pid's start time. A pid is compared only where all three "where" parts match: two
    containers with host networking share a host name, but not a pid namespace."""

    host: str
    boot: str
    pidns: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(
            host=socket.gethostname(),
            boot=_boot_id(),
            pidns=_pid_namespace(),
            pid=pid,
            start=_proc_start_time(pid),
        )

    def label(self) -> str:
        return f"{self.host}:{self.boot}:{self.pidns}:{self.pid}:{self.start}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner in a label; None for anything else (old formats included)."""
        parts = text.rsplit(":", 4)
        if len(parts) != 5 or not parts[3].isdigit():
            return None
        return cls(host=parts[0], boot=parts[1], pidns=parts[2], pid=int(parts[3]), start=parts[4])

    def is_dead(self) -> bool:
        """True only when this owner surely no longer runs: same host, boot and pid namespace
        as this process, and its pid gone or reused by a younger process. Anything that cannot
        be proved (another machine, another boot, another container) counts as alive."""
        here = Owner.current()
        if not (self.boot and self.pidns and self.start):
            return False
        if (self.host, self.boot, self.pidns) != (here.host, here.boot, here.pidns):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        current = _proc_start_time(self.pid)
        return bool(current and current != self.start)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def free_loopback_port(address: str = LOOPBACK) -> int:
    """A TCP port that is free on ``address`` of this machine right now (for a fixed host
    port)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]


def _reachable(host: str, timeout: float) -> str:
    """ "" when something listens at the engine address, else why not (no client is created).

    docker-py leaks a socket when its version negotiation fails, so an absent engine is detected
    here first, with a plain socket that is always closed. ``ssh://`` engines are not checked
    here (the ssh client connects).
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
    """A client of the engine the Docker CLI would use (DOCKER_HOST, the current docker context,
    the default socket); DockerUnavailable when none answers."""
    from .engine import endpoint

    host, source = endpoint()
    problem = _reachable(host, min(timeout, 5.0))
    hint = (
        "Start Docker (dockerd, Docker Desktop, colima, podman's docker socket) or point "
        "DOCKER_HOST at a running engine."
    )
    if problem:
        raise DockerUnavailable(
            f"no Docker engine answered at {host} ({source}; {problem}). {hint}"
        )
    import docker

    client = None
    try:
        kwargs: dict[str, Any] = {"timeout": int(max(timeout, 1)), "max_pool_size": 32}
        if host.startswith("ssh://"):
            kwargs["use_ssh_client"] = True
        if source == "DOCKER_HOST":
            # from_env also reads DOCKER_TLS_VERIFY and DOCKER_CERT_PATH
            client = docker.from_env(**kwargs)
        else:
            client = docker.DockerClient(base_url=host, **kwargs)
        client.ping()
    except Exception as exc:  # docker raises DockerException, requests errors, OSError...
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        raise DockerUnavailable(
            f"no Docker engine answered at {host} ({source}; {_short(exc)}). {hint}"
        ) from None
    return client


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)  # docker.errors.APIError: the engine's words
    if explanation:
        return f"{type(exc).__name__}: {explanation}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class DockerRuntime:
    """Starts :class:`ContainerSpec` objects as labelled containers on one private network.

    Containers are created through the Docker API (docker-py) with the plugin's own labels only:
    who removes them is decided by the stack's lease (see ``lease.py``), never by the process
    that happened to create them.
    """

    kind = "docker"

    def __init__(
        self,
        session_id: str,
        owner: Owner | None = None,
        extra_labels: Mapping[str, str] | None = None,
        network: str | None = None,
        *,
        bind: str | None = None,
        bind_source: str = "default",
    ) -> None:
        self.session_id = session_id
        self._bind = (bind, bind_source)
        self._engine: Engine | None = None
        self.owner = owner or Owner.current()
        self.extra_labels = dict(extra_labels or {})
        # after "bridge" in name order: a container on both keeps the default bridge as its
        # gateway network, so its published ports (and the connections through them) stay
        self._network_name = network or f"pytest-aikernel-{session_id}"
        #: the network is made only once something needs it (a plain stack: see
        #: :meth:`prepare_start`); until then containers start on the engine's default bridge
        self.network_on_demand = False
        self._network_wanted = False
        self._network_lock = threading.Lock()
        #: services whose container was started on the default bridge (no network yet)
        self._on_bridge: set[str] = set()
        self._has_bridge: bool | None = None  # the engine's default bridge, asked once
        self._client: docker.DockerClient | None = None
        self._network_ready = False
        self._containers: dict[str, Container] = {}  # service -> its container
        self._kept: set[str] = set()  # services whose tmpfs volumes a keeper holds
        self._lock = threading.Lock()

    # ---- engine -------------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = docker_client()
            return self._client

    @property
    def engine(self) -> Engine:
        """The engine, the address of its published ports and the bind address (found once;
        attached mode is checked with the engine)."""
        if self._engine is None:
            found = engine_of(self.client, *self._bind)
            with self._lock:
                self._engine = found
        return self._engine

    #: what a failed start left, for its error: nothing it made
    removal_note = "Every container this start made was removed."

    def publish(self, service: str, port: int) -> tuple[str, int]:
        """(address, host port) at which the test process will reach container port ``port`` of
        ``service``, chosen before it starts (Kafka advertises it)."""
        return self.engine.host, self.free_port()

    def free_port(self) -> int:
        """A host port to publish on: free on this machine for a local engine; a random one for
        a remote engine, whose ports cannot be checked from here (a taken one is chosen again)."""
        engine = self.engine
        if engine.local:
            return free_loopback_port(engine.bind)
        import random

        return random.randint(33000, 60000)

    def engine_version(self) -> str:
        return str(self.client.version().get("Version", "unknown"))

    def labels(self, service: str | None = None, **extra: str) -> dict[str, str]:
        labels = {
            **self.extra_labels,
            LABEL_SESSION: self.session_id,
            LABEL_OWNER: self.owner.label(),
            **extra,
        }
        if service is not None:
            labels[LABEL_SERVICE] = service
        return labels

    # ---- network ------------------------------------------------------------------------------

    @property
    def network_name(self) -> str:
        """The stack's network, ``pytest-aikernel-<session id>``. A plain stack whose services reach
        no other has none until this is read: whoever asks for it means to put a container on
        it, so it is made then, with every container of the stack on it under its alias."""
        if self.network_on_demand and not self._network_ready:
            self.create_network()
        return self._network_name

    def prepare_start(self, in_network: bool) -> None:
        """Before services start: make the network now when one of them talks to another over
        it (``in_network``), when this runtime has no choice (a shared stack, attached mode),
        or when it exists already; the making overlaps the services' own preparations (image
        checks, snapshot lookups). Else they start on the default bridge."""
        if not (
            in_network
            or not self.network_on_demand
            or self._network_wanted
            or self._attached()
            or not self._default_bridge()
        ):
            return
        self._network_wanted = True
        if not self._network_ready:
            threading.Thread(
                target=self._create_quietly, name="aikernel-network", daemon=True
            ).start()

    def _default_bridge(self) -> bool:
        """Whether the engine has its default bridge (``dockerd --bridge=none`` has none: a
        container started without a network would then publish no port)."""
        import docker.errors

        if self._has_bridge is None:
            try:
                self.client.api.inspect_network("bridge")
                self._has_bridge = True
            except docker.errors.NotFound:
                self._has_bridge = False
            except Exception:
                return True  # the start says what is wrong with the engine
        return self._has_bridge

    def _create_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the start that needs it makes it and says why
            self.create_network()

    def create_network(self) -> None:
        """Create the stack's network unless it exists (several processes may race for it),
        and put the containers that started on the default bridge on it."""
        import docker.errors

        self._network_wanted = True
        with self._network_lock:
            if self._network_ready:
                return
            client = self.client
            if not client.networks.list(names=[self._network_name]):
                try:
                    client.networks.create(
                        self._network_name,
                        driver="bridge",
                        labels=self.labels(),
                        check_duplicate=True,
                    )
                except docker.errors.APIError as exc:
                    if not client.networks.list(names=[self._network_name]):
                        raise DockerUnavailable(
                            f"could not create the network {self._network_name}: {_short(exc)}"
                        ) from None
            self._attach_self()
            for service in sorted(self._on_bridge):
                self._join(service)
            self._network_ready = True

    def _join(self, service: str) -> None:
        """Put the container of ``service`` (started on the default bridge) on the stack network
        as well, under its alias: its published ports and open connections stay as they are."""
        import docker.errors

        try:
            self.client.api.connect_container_to_network(
                self.container_name(service), self._network_name, aliases=[service]
            )
        except docker.errors.NotFound:
            return  # removed meanwhile
        except docker.errors.APIError as exc:
            if "already exists" not in str(exc) and "already attached" not in str(exc):
                raise ServiceError(
                    service,
                    f"{service}: could not put its container on the stack network "
                    f"{self._network_name}: {_short(exc)}",
                ) from None

    def _attach_self(self) -> None:
        """Attached mode: put this process's container on the stack network (idempotent)."""
        engine = self.engine
        if not engine.attached:
            return
        import docker.errors

        try:
            self.client.api.connect_container_to_network(engine.container, self._network_name)
        except docker.errors.APIError as exc:
            if "already exists" not in str(exc) and "already attached" not in str(exc):
                raise DockerUnavailable(
                    f"could not put this container ({engine.container[:12]}) on the stack "
                    f"network {self._network_name}: {_short(exc)}"
                ) from None

    def use_network(self, name: str) -> None:
        """Start further containers on an existing network (a stack attached to, not owned)."""
        with self._lock:
            self._network_name = name
            self._network_ready = self._network_wanted = True
        self._attach_self()

    def adopt(self, service: str, container_id: str) -> None:
        """Know ``service`` as the container ``container_id`` that another process started."""
        try:
            raw = self.client.containers.get(container_id)
        except Exception:
            return
        with self._lock:
            self._containers[service] = raw

    def detach(self) -> None:
        """Forget the containers without removing them; close the client."""
        with self._lock:
            self._containers.clear()
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

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

    def container_name(self, service: str) -> str:
        return f"aikernel-{self.session_id}-{service}"

    def start(
        self,
        service: str,
        spec: ContainerSpec,
        labels: Mapping[str, str] | None = None,
        *,
        host_ports: Mapping[int, int] | None = None,
    ) -> Running:
        """Create and start the container for ``service``; ports published on 127.0.0.1.

        Every published port gets a fixed host port (the spec's ``host_ports``, then
        ``host_ports``, else one free now), so that a stopped and started container comes back
        on the same port: the engine would give an ephemeral binding a new one. A port taken
        between its choice and the start is chosen again (twice at most).
        """
        fixed = {**dict(host_ports or {}), **spec.host_ports}
        for attempt in range(3):
            chosen = {port: fixed.get(port) or self.free_port() for port in spec.ports}
            try:
                return self._start(service, spec, labels, chosen)
            except ServiceError as exc:
                if (
                    attempt == 2
                    or "already" not in str(exc)
                    or all(port in fixed for port in spec.ports)
                ):
                    raise
                self.remove([service])
        raise AssertionError("unreachable")

    def _start(
        self,
        service: str,
        spec: ContainerSpec,
        labels: Mapping[str, str] | None,
        chosen: Mapping[int, int],
    ) -> Running:
        from docker.types import EndpointConfig

        on_network = self._network_wanted or not self.network_on_demand
        if on_network:
            self.create_network()
        client = self.client
        engine = self.engine
        bindings: dict[str, Any] = {
            f"{port}/tcp": (engine.bind, chosen[port]) for port in spec.ports
        }
        kwargs: dict[str, Any] = {
            "name": self.container_name(service),
            "labels": {**self.labels(service), **(labels or {})},
            "environment": dict(spec.env),
            "ports": bindings,
            "detach": True,
        }
        if on_network:
            with self._lock:
                self._on_bridge.discard(service)  # a container made again (recreate)
            kwargs["network"] = self._network_name
            kwargs["networking_config"] = {
                self._network_name: EndpointConfig(client.api.api_version, aliases=[service])
            }
        else:
            # no service of the stack reaches it yet: the default bridge spares the engine the
            # network and the per-container name server (0.2 s for three containers here)
            with self._lock:
                self._on_bridge.add(service)
        if spec.command is not None:
            kwargs["command"] = list(spec.command)
        if spec.entrypoint is not None:
            kwargs["entrypoint"] = list(spec.entrypoint)
        if spec.user is not None:
            kwargs["user"] = spec.user
        if spec.tmpfs:
            kwargs["mounts"] = [self._tmpfs_volume(service, p, o) for p, o in spec.tmpfs.items()]
        if spec.volumes:
            kwargs.setdefault("mounts", []).extend(self._cache_volumes(spec))
        if spec.extra_hosts:
            kwargs["extra_hosts"] = dict(spec.extra_hosts)
        started = time.monotonic()
        try:
            raw: Container = client.containers.create(spec.image, **kwargs)
            with self._lock:
                self._containers[service] = raw
            if spec.volumes:  # the image's user may be anyone: a cache is writable by all
                raw.put_archive("/", _tar_dirs(spec.volumes.values(), 0o1777))
            if spec.files:
                raw.put_archive("/", _tar(spec.files))
            raw.start()
            raw.reload()
            if not on_network and self._network_ready:
                self._join(service)  # the network was made while this one started
        except Exception as exc:
            raise ServiceError(
                service,
                f"{service}: could not start a container from {spec.image!r}: {_short(exc)}.",
            ) from None
        if engine.attached:
            # pytest runs in a container on the stack network: the service's own ports
            host, ports = service, {port: port for port in spec.ports}
        else:
            host, ports = engine.host, _published_ports(raw.attrs, spec.ports)
        return Running(
            service=service,
            image=spec.image,
            container_id=str(raw.id),
            host=host,
            ports=ports,
            internal_host=service,
            started_at=started,
        )

    def _tmpfs_volume(self, service: str, path: str, options: str) -> Any:
        """A tmpfs mount as an anonymous local volume of type tmpfs: as fast as ``--tmpfs``, but
        it outlives a stopped container as long as another container holds it (see
        :meth:`keep_data`); removed with the container (``v=True``) or by its labels."""
        from docker.types import DriverConfig, Mount

        opts = {"type": "tmpfs", "device": "tmpfs"}
        if options:
            opts["o"] = options
        return Mount(
            target=path,
            source=None,
            type="volume",
            labels={**self.labels(service), LABEL_TMPFS: path},
            driver_config=DriverConfig("local", opts),
        )

    def _cache_volumes(self, spec: ContainerSpec) -> list[Any]:
        """The spec's named cache volumes, one per name and image id (made by the engine at
        the first mount, with the labels; never removed with a stack)."""
        from docker.types import Mount

        image_id = self.image_id(spec.image)
        return [
            Mount(
                target=path,
                source=cache_volume_name(name, image_id),
                type="volume",
                labels={LABEL_CACHE: name, LABEL_CACHE_IMAGE: image_id},
            )
            for name, path in spec.volumes.items()
        ]

    # ---- faults: the same container, stopped, started, paused, cut off -----------------------

    def container(self, service: str) -> Container:
        """The container of ``service``, looked up by its name (another process may have made
        it again); ServiceError when it is gone."""
        import docker.errors

        try:
            raw = self.client.containers.get(self.container_name(service))
        except docker.errors.NotFound:
            raise ServiceError(
                service, f"{service}: its container {self.container_name(service)} is gone"
            ) from None
        except Exception as exc:
            raise ServiceError(
                service, f"{service}: cannot inspect its container: {_short(exc)}"
            ) from None
        with self._lock:
            self._containers[service] = raw
        return raw

    def _do(self, service: str, what: str, call: Callable[[Container], Any]) -> None:
        raw = self.container(service)
        try:
            call(raw)
        except Exception as exc:
            raise ServiceError(service, f"{service}: {what} failed: {_short(exc)}") from None

    def state(self, service: str) -> ContainerState:
        """Whether the container of ``service`` runs, is paused and is on its networks."""
        raw = self.container(service)
        state = raw.attrs.get("State", {})
        networks = raw.attrs.get("NetworkSettings", {}).get("Networks") or {}
        return ContainerState(
            running=bool(state.get("Running")),
            paused=bool(state.get("Paused")),
            connected=all(net in networks for net in self._networks_of(service)),
            container_id=str(raw.id),
            ports=_published_ports(raw.attrs, _exposed(raw.attrs)),
        )

    def stop(self, service: str, timeout: float = 10.0) -> None:
        """``docker stop``: SIGTERM (the image's stop signal), SIGKILL after ``timeout`` s."""
        self.keep_data(service)
        self._do(service, "stop", lambda raw: raw.stop(timeout=max(0, round(timeout))))

    def kill(self, service: str, signal: str = "SIGKILL") -> None:
        """``docker kill --signal``: the container's main process gets ``signal``."""
        self.keep_data(service)
        self._do(service, f"kill with {signal}", lambda raw: raw.kill(signal=signal))

    def start_again(self, service: str) -> None:
        """``docker start`` of the stopped container (same host ports, alias and data)."""
        self._do(service, "start", lambda raw: raw.start())

    def pause(self, service: str) -> None:
        self._do(service, "pause", lambda raw: raw.pause())

    def unpause(self, service: str) -> None:
        self._do(service, "unpause", lambda raw: raw.unpause())

    def _networks_of(self, service: str) -> list[str]:
        """The networks the container of ``service`` is on when no fault cut it off: the
        default bridge if it started there (its published ports are on that one), and the
        stack network once there is one."""
        with self._lock:
            bridge = service in self._on_bridge
        return (["bridge"] if bridge else []) + (
            [self._network_name] if self._network_ready or not bridge else []
        )

    def disconnect(self, service: str) -> None:
        """Take the container off its networks (its published ports go with them)."""
        name = self.container_name(service)

        def cut(_raw: Container) -> None:
            for network in self._networks_of(service):
                self.client.api.disconnect_container_from_network(name, network, force=True)

        self._do(service, "disconnect", cut)

    def reconnect(self, service: str) -> None:
        """Put the container back on its networks, on the stack network under its alias."""
        name = self.container_name(service)

        def join(_raw: Container) -> None:
            for network in self._networks_of(service):
                aliases = [service] if network == self._network_name else None
                self.client.api.connect_container_to_network(name, network, aliases=aliases)

        self._do(service, "reconnect", join)

    def keep_data(self, service: str) -> None:
        """Hold the tmpfs volumes of ``service`` in a small second container (``sleep`` in the
        same image, no network) so that they survive a stop of the service's container: the
        engine unmounts a tmpfs volume when no running container uses it. Made once; removed
        with the service."""
        import docker.errors

        raw = self.container(service)
        mounts = [
            m
            for m in raw.attrs.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name") and self._is_tmpfs(str(m["Name"]))
        ]
        if not mounts:
            return
        name = self.keeper_name(service)
        client = self.client
        try:
            keeper = client.containers.get(name)
        except docker.errors.NotFound:
            keeper = None
        if keeper is None:
            from docker.types import Mount

            try:
                keeper = client.containers.create(
                    str(raw.attrs.get("Image")),
                    name=name,
                    entrypoint=["sleep", "infinity"],
                    command=[],
                    labels=self.labels(f"keeper:{service}"),
                    network_mode="none",
                    mounts=[
                        Mount(target=f"/keep/{i}", source=str(m["Name"]), type="volume")
                        for i, m in enumerate(mounts)
                    ],
                    detach=True,
                )
            except docker.errors.APIError as exc:
                if "Conflict" not in str(exc) and "already in use" not in str(exc):
                    raise ServiceError(
                        service, f"{service}: cannot keep its tmpfs data: {_short(exc)}"
                    ) from None
                keeper = client.containers.get(name)
        try:
            if keeper.status != "running":
                keeper.start()
            keeper.reload()
        except Exception as exc:
            raise ServiceError(
                service, f"{service}: cannot keep its tmpfs data: {_short(exc)}"
            ) from None
        with self._lock:
            self._kept.add(service)
        if keeper.attrs.get("State", {}).get("Running") is not True:
            raise ServiceError(
                service,
                f"{service}: cannot keep its tmpfs data across a restart: a `sleep infinity` "
                f"container of its image exited ({keeper.attrs.get('State', {}).get('Error')})",
            )

    def _is_tmpfs(self, volume: str) -> bool:
        try:
            info = self.client.api.inspect_volume(volume)
        except Exception:
            return False
        return bool((info.get("Options") or {}).get("type") == "tmpfs")

    def keeper_name(self, service: str) -> str:
        return f"aikernel-{self.session_id}-keeper-{service}"

    def recreate(
        self, service: str, spec: ContainerSpec, labels: Mapping[str, str] | None = None
    ) -> Running:
        """Remove the container of ``service`` and start ``spec`` in its place: same name,
        alias and host ports (a promoted replica is made again)."""
        old = self.state(service)
        self.remove([service])
        with contextlib.suppress(Exception):
            self.client.containers.get(self.container_name(service)).remove(force=True, v=True)
        return self.start(service, spec, labels, host_ports=old.ports)

    # ---- snapshots: a local image of a seeded service ------------------------------------------

    def exec(
        self, service: str, cmd: list[str], env: Mapping[str, str] | None = None, user: str = ""
    ) -> tuple[int, str]:
        """Run ``cmd`` in the running container of ``service``: (exit code, output)."""
        raw = self.container(service)
        try:
            result = raw.exec_run(cmd, environment=dict(env or {}), user=user or "")
        except Exception as exc:
            raise ServiceError(service, f"{service}: exec failed: {_short(exc)}") from None
        data = result.output if isinstance(result.output, bytes) else b""
        return int(result.exit_code or 0), data.decode("utf-8", "replace")

    def image_id(self, image: str) -> str:
        """The id of a local image ("" when it is not there)."""
        try:
            return str(self.client.images.get(image).id)
        except Exception:
            return ""

    def find_snapshot(self, service: str, key: str, base_id: str) -> tuple[str, dict[str, str]]:
        """The tag of the snapshot of ``service`` for ``key`` made from the image ``base_id``
        ("" when there is none, or it was made from another image), and the secrets its data
        holds (by their names in the stack's secret store)."""
        tag = snapshot_tag(service, key)
        try:
            labels = self.client.images.get(tag).labels or {}
        except Exception:
            return "", {}
        if labels.get(LABEL_SNAPSHOT_KEY) != key or labels.get(LABEL_SNAPSHOT_BASE) != base_id:
            return "", {}
        held = {
            name[len(LABEL_SNAPSHOT_SECRET) :]: value
            for name, value in labels.items()
            if name.startswith(LABEL_SNAPSHOT_SECRET)
        }
        return tag, held

    def capture(self, service: str, paths: Iterable[str]) -> dict[str, bytes]:
        """Tar archives of ``paths`` in the container of ``service`` (as the Docker API gives
        them), taken while the container is paused: every process frozen, the files do not
        change under the copy. Only the copy is on this path; filtering and the image build
        are :meth:`build_snapshot`'s."""
        raw = self.container(service)
        out: dict[str, bytes] = {}
        raw.pause()
        try:
            for path in paths:
                stream, _stat = raw.get_archive(path)
                out[path] = b"".join(stream)
        finally:
            raw.unpause()
        return out

    def build_snapshot(
        self,
        service: str,
        *,
        key: str,
        base_image: str,
        base_id: str,
        archives: Mapping[str, bytes],
        exclude: Iterable[str] = (),
        secrets: Mapping[str, str] | None = None,
        version: str,
    ) -> str:
        """An image ``FROM base_image`` with each archive (of a data directory ``path``, less
        the ``exclude`` files relative to it) at ``SNAPSHOT_ROOT + path``, tagged
        ``aikernel-snapshot/<service>:<key>``, with the ``secrets`` its data holds as labels;
        returns the tag. The session never calls this: a separate process seeds a stack of its
        own and builds the image after the session (:mod:`.snapbuild`)."""
        tag = snapshot_tag(service, key)
        labels = {
            LABEL_SNAPSHOT: service,
            LABEL_SNAPSHOT_KEY: key,
            LABEL_SNAPSHOT_BASE: base_id,
            "pytest-aikernel.version": version,
            **{LABEL_SNAPSHOT_SECRET + name: value for name, value in (secrets or {}).items()},
        }
        from .snapbuild import build_snapshot_image

        try:
            build_snapshot_image(
                self.client,
                base_image=base_image,
                tag=tag,
                labels=labels,
                archives=archives,
                exclude=set(exclude),
                root=SNAPSHOT_ROOT,
            )
        except Exception as exc:
            raise ServiceError(
                service, f"{service}: the snapshot image could not be built: {_short(exc)}"
            ) from None
        return tag

    def remove_image(self, image: str) -> None:
        with contextlib.suppress(Exception):
            self.client.images.remove(image, force=True)

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

    def is_running(self, container_id: str) -> bool:
        """Whether the container exists and runs (False for any error)."""
        try:
            raw = self.client.containers.get(container_id)
        except Exception:
            return False
        return bool(raw.attrs.get("State", {}).get("Running"))

    def put_file(self, service: str, path: str, content: bytes, mode: int = 0o644) -> bool:
        """Write ``content`` at ``path`` in the running container of ``service``."""
        raw = self._raw(service)
        if raw is None:
            return False
        return bool(raw.put_archive("/", _tar({path: (content, mode)})))

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
        with self._lock:
            return self._containers.get(service)

    def remove(self, services: Iterable[str]) -> None:
        for service in list(services):
            with self._lock:
                raw = self._containers.pop(service, None)
                kept = service in self._kept
                self._kept.discard(service)
            if kept:  # the keeper first: it holds the service's volumes
                with contextlib.suppress(Exception):
                    self.client.containers.get(self.keeper_name(service)).remove(force=True, v=True)
            if raw is None:
                continue
            with contextlib.suppress(Exception):
                raw.remove(force=True, v=True)

    # ---- what leases ask of a runtime --------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``aikernel down`` needs to find this runtime's stack again."""
        return {"kind": "docker"}

    def sweep_dead(self) -> list[str]:
        """Remove what sessions of dead processes left on the engine; their session ids."""
        return sweep_dead_sessions(self.client)

    def remove_orphans(self, known: Iterable[str]) -> None:
        """Remove containers of this session whose ids ``known`` lacks (a worker died while
        starting them), except services under test and keepers."""
        ids = set(known)
        for container in self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{LABEL_SESSION}={self.session_id}"}
        ):
            # "container:<name>" (services under test), "keeper:<service>" (tmpfs keepers)
            if container.id not in ids and ":" not in str(container.labels.get(LABEL_SERVICE, "")):
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)

    def find(self, service: str) -> bool:
        """Whether a container of ``service`` exists under this session's name."""
        import docker.errors

        try:
            self.client.containers.get(self.container_name(service))
        except docker.errors.NotFound:
            return False
        return True

    def remove_service(self, service: str, container_id: str) -> None:
        """Remove ``service``'s container (by id, else by name), its keeper and volumes."""
        remove_service(
            self.client, self.session_id, service, container_id or self.container_name(service)
        )

    def start_container(self, container_id: str) -> bool:
        """``docker start`` of a stopped container by id (False when it cannot be)."""
        try:
            self.client.containers.get(container_id).start()
        except Exception:
            return False
        return True

    def close(self, *, in_background: bool = False) -> None:
        """Remove every container of this runtime's session and its network; with
        ``in_background``, a process of its own removes them and this call returns at once
        (the caller makes sure something else removes them if that process fails: Ryuk)."""
        from concurrent.futures import ThreadPoolExecutor

        # not from inside a container on the stack's network (attached mode): its end, which
        # follows at once, would end the removing process too
        if in_background and not self._attached() and self._remove_in_background():
            self.detach()
            return
        with self._lock:
            names = list(self._containers)
        if names:
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                list(pool.map(lambda n: self.remove([n]), names))
        # anything of this session that escaped the bookkeeping (e.g. a start interrupted
        # between create and our record of it), and the network
        if self._client is not None or names:
            with contextlib.suppress(Exception):
                remove_by_labels(self.client, {LABEL_SESSION: self.session_id})
        self.detach()

    def _attached(self) -> bool:
        try:
            return self.engine.attached
        except Exception:
            return True  # unknown: remove here

    def _remove_in_background(self) -> bool:
        """Start ``python -m pytest_aikernel.runtime.remover <session>`` detached; False when
        it could not be started."""
        return spawn_detached("pytest_aikernel.runtime.remover", self.session_id)


def _tar(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """A tar archive of ``files`` (absolute path -> (content, mode)), to extract at ``/``."""
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return data.getvalue()


def _tar_dirs(paths: Iterable[str], mode: int) -> bytes:
    """A tar archive of the directories ``paths`` (absolute) with ``mode``, to extract at ``/``:
    on a mount point it sets the mode of the mounted volume's root."""
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path in paths:
            info = tarfile.TarInfo(path.strip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info)
    return data.getvalue()


def cache_volume_name(name: str, image_id: str) -> str:
    """The engine's name of the cache volume ``name`` for the image ``image_id``."""
    digest = image_id.rpartition(":")[2][:12] or "unknown"
    return f"aikernel-cache-{name}-{digest}"


def _published_ports(attrs: dict[str, Any], wanted: Iterable[int]) -> dict[int, int]:
    bindings = attrs.get("NetworkSettings", {}).get("Ports") or {}
    ports: dict[int, int] = {}
    for port in wanted:
        entries = bindings.get(f"{port}/tcp") or []
        for entry in entries:
            if entry.get("HostPort"):
                ports[port] = int(entry["HostPort"])
                break
    return ports


def _exposed(attrs: dict[str, Any]) -> list[int]:
    bindings = attrs.get("HostConfig", {}).get("PortBindings") or {}
    return [int(key.split("/")[0]) for key in bindings if key.endswith("/tcp")]


#: pids of detached processes started by this process (reaped when they end)
_BUILDERS: list[int] = []


def spawn_detached(module: str, *args: str, keep_fds: Iterable[int] = ()) -> bool:
    """Run ``python -m module args`` in a process of its own session, with no input or output,
    that this process does not wait for (it may outlive it); False where that cannot be done
    (no posix_spawn: Windows) or the start failed. ``keep_fds`` are passed on to the child (a
    lock it goes on holding)."""
    import sys

    spawn = getattr(os, "posix_spawn", None)
    if spawn is None:
        return False
    env = dict(os.environ)
    # the child imports this very package, also where only this process's sys.path finds it
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    devnull = os.devnull
    for fd in keep_fds:
        os.set_inheritable(fd, True)
    try:
        # posix_spawn, not Popen: a Popen object dropped while its child runs warns
        # (ResourceWarning), which `-W error` turns into a test error
        pid = spawn(
            sys.executable,
            [sys.executable, "-m", module, *args],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, devnull, os.O_WRONLY, 0),
            ],
            setsid=True,
        )
    except OSError:
        return False
    _BUILDERS.append(pid)
    return True


def reap_builders() -> None:
    """Collect the detached processes that have ended (no zombies)."""
    for pid in list(_BUILDERS):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _BUILDERS.remove(pid)


def build_image(
    client: docker.DockerClient, context: Any, tag: str, labels: Mapping[str, str]
) -> None:
    """Build ``tag`` from a tar build context (file object), never pulling."""
    client.images.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        pull=False,
        rm=True,
        forcerm=True,
        labels=dict(labels),
    )


def snapshot_tag(service: str, key: str) -> str:
    return f"{SNAPSHOT_REPO}/{service}:{key}"


def _remove_network(network: Any) -> None:
    """Remove a stack network; containers that are not the stack's (a pytest container in
    attached mode, a user's) are disconnected from it first."""
    with contextlib.suppress(Exception):
        network.reload()
        for container_id in network.attrs.get("Containers") or {}:
            with contextlib.suppress(Exception):
                network.disconnect(container_id, force=True)
    with contextlib.suppress(Exception):
        network.remove()


def engine_of(
    client: docker.DockerClient, bind: str | None = None, bind_source: str = "default"
) -> Engine:
    """The engine of the environment (``client`` is its client), attached mode checked."""
    import dataclasses

    from .engine import find

    found = find(bind, bind_source)
    if found.local:
        own = _own_container(client)
        if own:
            found = dataclasses.replace(found, container=own, host_source="stack network")
    return found


def _own_container(client: docker.DockerClient) -> str:
    """The id of the container this process runs in, when it is a container of ``client``'s
    engine without host networking ("" otherwise)."""
    from .engine import own_container_candidates

    if not os.path.exists("/.dockerenv") and not os.environ.get("AIKERNEL_IN_CONTAINER"):
        return ""
    for candidate in own_container_candidates():
        try:
            raw = client.containers.get(candidate)
        except Exception:
            continue
        if raw.attrs.get("HostConfig", {}).get("NetworkMode") == "host":
            return ""
        if raw.attrs.get("Config", {}).get("Hostname") == socket.gethostname():
            return str(raw.id)
    return ""


def remove_service(
    client: docker.DockerClient, session_id: str, service: str, container_id: str
) -> None:
    """Remove one service's container, the keeper of its tmpfs volumes (if a fault made one)
    and those volumes."""
    for ref in (f"aikernel-{session_id}-keeper-{service}", container_id):
        with contextlib.suppress(Exception):
            client.containers.get(ref).remove(force=True, v=True)
    labels = [f"{LABEL_SESSION}={session_id}", f"{LABEL_SERVICE}={service}", LABEL_TMPFS]
    with contextlib.suppress(Exception):
        for volume in client.volumes.list(filters={"label": labels}):
            with contextlib.suppress(Exception):
                volume.remove(force=True)


def remove_by_labels(client: docker.DockerClient, labels: dict[str, str]) -> int:
    """Remove every container, network and volume carrying all of ``labels``; return the number
    of containers removed."""
    filters: dict[str, Any] = {"label": [f"{k}={v}" for k, v in labels.items()]}
    removed = 0
    containers = client.containers.list(all=True, ignore_removed=True, filters=filters)

    def remove(container: Any) -> int:
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)
            return 1
        return 0

    # keepers first: they hold the tmpfs volumes of the others; then the rest side by side
    keepers = [c for c in containers if str(c.labels.get(LABEL_SERVICE, "")).startswith("keeper:")]
    others = [c for c in containers if c not in keepers]
    removed += sum(remove(c) for c in keepers)
    if others:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(others), 8)) as pool:
            removed += sum(pool.map(remove, others))
    for network in client.networks.list(filters=filters):
        _remove_network(network)
    with contextlib.suppress(Exception):
        for volume in client.volumes.list(filters=filters):
            with contextlib.suppress(Exception):
                volume.remove(force=True)
    return removed


def sweep_dead_sessions(client: docker.DockerClient) -> list[str]:
    """Remove containers and networks of sessions whose owning process is dead on this host.

    Returns the session ids removed. Sessions of live processes, and of other hosts, are left.
    """
    dead: set[str] = set()
    seen: dict[str, bool] = {}
    objects: list[Any] = [
        *client.containers.list(all=True, ignore_removed=True, filters={"label": [LABEL_SESSION]}),
        *client.networks.list(filters={"label": [LABEL_SESSION]}),
        *client.volumes.list(filters={"label": [LABEL_SESSION]}),
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
