"""The contract every service module fulfils, and the context the stack hands to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar
from urllib.parse import SplitResult, urlsplit

from ..errors import ConfigError
from ..runtime import ContainerSpec, Running
from ..secrets import SecretStore, mask_value
from ..settings import Settings


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where a service serves Prometheus metrics inside the stack network."""

    port: int
    path: str = "/metrics"
    params: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    bearer_token: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class TestScope:
    """What a per-test fixture knows about the test it isolates."""

    #: the test's name (``aik_<worker>_<n>_<8 hex>``), shared by every per-test fixture of one
    #: test and unique per run, worker and test; lower-case letters, digits and '_' (a valid
    #: database, topic, index and path name). Per-test objects show it as ``scope_name``.
    name: str
    #: "main" without pytest-xdist, else the worker id ("gw0", "gw1", ...)
    worker: str
    #: 0 for "main" and "gw0", n for "gwn"
    worker_index: int
    #: scratch space kept for the whole session by this service's per-test fixtures
    state: dict[str, Any]

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """The session-wide object ``key`` of this service's per-test fixtures, made once.

        The stack calls ``close()`` on each of them when it stops.
        """
        if key not in self.state:
            self.state[key] = make()
        value: T = self.state[key]
        return value


class Janitor:
    """Runs per-test cleanups on a background thread, off the tests' path; ``close`` drains."""

    def __init__(self, name: str) -> None:
        import queue
        import threading

        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"aikernel-{name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        import contextlib

        while True:
            task = self._tasks.get()
            if task is None:
                return
            with contextlib.suppress(Exception):
                task()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=60)


@dataclass(frozen=True)
class Isolation:
    """A function-scoped fixture giving one test its own, clean share of a service."""

    fixture: str
    doc: str
    #: (the service's public object, the test's scope) -> context manager of the fixture value
    make: Callable[[Any, TestScope], AbstractContextManager[Any]]
    #: set on the fixture that stands for its service in ``aikernel_world``: (the session's
    #: ``secret/aikernel/<service>`` entry, the fixture's value) -> the fields that differ in
    #: the test's world (its own database, Redis database, topic or index prefix)
    world_entry: Callable[[Mapping[str, Any], Any], Mapping[str, Any]] | None = None
    #: (the fixture's value, in-network?) -> the external-mode environment variables that point
    #: at the test's own resource (and any variables only a world has, such as a prefix)
    world_env: Callable[[Any, bool], Mapping[str, str]] | None = None


class SeedLedger(ABC):
    """What a seed lock in the stack knows: service -> the key it was seeded with."""

    @abstractmethod
    def seeded(self) -> dict[str, str]: ...

    @abstractmethod
    def mark(self, keys: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class Route:
    """Where a proxy of one service port listens: host side and in-network address."""

    host: str
    port: int
    internal_host: str
    internal_port: int


@dataclass(frozen=True)
class ExternalTarget:
    """Where an already running server is (external mode) and the credentials it takes."""

    host: str
    #: the port the official image would listen on -> the port the server really has
    ports: Mapping[int, int]
    #: secret name (as used by the service module) -> value
    secrets: Mapping[str, str] = field(default_factory=dict)


def external_url(env: Mapping[str, str], name: str, default: str) -> SplitResult:
    """The URL in env var ``name`` (or ``default``), parsed; ConfigError names the variable."""
    text = env.get(name, "").strip() or default
    try:
        url = urlsplit(text if "://" in text else "tcp://" + text)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"env {name}: {text!r} is not a valid address ({exc})") from None
    if not url.hostname:
        raise ConfigError(f"env {name}: {text!r} has no host")
    return url


@dataclass
class StackContext:
    """What a service may know about the stack it runs in."""

    settings: Settings
    secrets: SecretStore
    #: every service of the stack (started or about to be)
    services: frozenset[str]
    #: services started so far -> where they run
    running: dict[str, Running] = field(default_factory=dict)
    #: services ready so far -> their public objects
    exposed: dict[str, Any] = field(default_factory=dict)
    #: service name -> its Vault entry (None when it contributes none); filled by the stack
    describe: Callable[[str], Mapping[str, Any] | None] = lambda _name: None
    #: (service, path, content): write a file into a running service's container; filled by
    #: the stack (False where nothing can be written: external mode, attached stacks)
    put_file: Callable[[str, str, bytes], bool] = lambda _s, _p, _c: False
    #: (service, container port) -> (the address and host port at which the test process will
    #: reach that port, chosen before the service starts), or None when the test process
    #: reaches services by their network alias (pytest in a container on the stack network);
    #: filled by the stack
    published: Callable[[str, int], tuple[str, int] | None] = lambda _s, _p: ("127.0.0.1", 0)
    #: (service, command, environment) -> (exit code, output): run a command in a running
    #: service's container; filled by the stack
    exec: Callable[[str, list[str], Mapping[str, str]], tuple[int, str]] = lambda _s, _c, _e: (
        1,
        "no container",
    )

    def image(self, service: str) -> str:
        from . import image_for

        return image_for(service, self.settings)


class Service(ABC):
    """Everything that is true of one service: image, container, readiness, seed, public object.

    The stack calls, in order: :meth:`container` (what to run), :meth:`probe` until it passes,
    :meth:`seed` once the services named by :meth:`seed_after` are ready, then :meth:`expose`.
    """

    #: service name as used in markers, settings and network aliases
    name: ClassVar[str]
    #: the official image, pinned
    default_image: ClassVar[str]
    #: use this service's image unless the user overrides this one (replicas)
    image_from: ClassVar[str | None] = None
    #: services that must be ready before this one's container starts
    depends_on: ClassVar[tuple[str, ...]] = ()
    #: services that must run in the same stack, without waiting for them to be ready (the
    #: service connects to them by itself, e.g. Kibana to Elasticsearch)
    requires: ClassVar[tuple[str, ...]] = ()
    #: its container reaches other services of the stack by their network alias (besides
    #: ``depends_on`` and ``requires``, which always do): a plain stack gets its network only
    #: once a service like this starts (or someone asks for the network)
    reaches_others: ClassVar[bool] = False
    #: a helper of the tests, not one of the platform's services (Toxiproxy): it starts only
    #: when a test asks for it, never as part of "every service"
    helper: ClassVar[bool] = False
    #: container ports published on 127.0.0.1
    ports: ClassVar[tuple[int, ...]] = ()
    #: docstring of the session fixture ``aikernel_<name>``
    fixture_doc: ClassVar[str] = ""
    #: a log line the server prints once it can answer (used by benchmarks)
    ready_log: ClassVar[str] = ""
    #: per-test fixtures of this service
    isolations: ClassVar[tuple[Isolation, ...]] = ()
    #: the Settings fields that reach this service's container or seed (files count by their
    #: content): with its image, the plugin version and its dependencies' keys, they make the
    #: key under which a reused container of this service is found again
    shaped_by: ClassVar[tuple[str, ...]] = ()

    @property
    def in_network(self) -> bool:
        """Whether this service's container talks to other services over the stack network."""
        return self.reaches_others or bool(self.depends_on or self.requires)

    def validate(self, settings: Settings) -> None:  # noqa: B027 - optional hook
        """Check this service's settings early (configure time); raise ConfigError."""

    @abstractmethod
    def container(self, ctx: StackContext) -> ContainerSpec:
        """The container to run, for the official image and its stand-ins alike."""

    @abstractmethod
    def probe(self, ctx: StackContext, running: Running) -> None:
        """Return when the service answers at protocol level; raise anything while it does not."""

    def seed_after(self, ctx: StackContext) -> frozenset[str]:
        """Services that must be ready before :meth:`seed` runs (besides ``depends_on``)."""
        return frozenset()

    def seed(self, ctx: StackContext, running: Running) -> None:  # noqa: B027 - optional hook
        """Load data into the ready service; raise SeedError naming the file."""

    def freeze(self, ctx: StackContext, running: Running) -> None:  # noqa: B027 - optional
        """Last seeding step, after the user's ``pytest_aikernel_ready`` hooks (templates)."""

    @abstractmethod
    def expose(self, ctx: StackContext, running: Running) -> Any:
        """The typed public object tests get from ``aikernel_<name>``."""

    def vault_entry(self, ctx: StackContext, running: Running) -> Mapping[str, Any] | None:
        """What this service stores under ``secret/aikernel/<name>`` in Vault (None: nothing)."""
        return None

    #: the env var naming an already running server in external mode, and its default (the
    #: infrastructure README's development stack)
    external_env: ClassVar[str] = ""
    external_default: ClassVar[str] = ""

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        """Where the server is in external mode (host port for each container port)."""
        url = external_url(env, self.external_env, self.external_default)
        port = url.port or self.ports[0]
        return ExternalTarget(host=str(url.hostname), ports={self.ports[0]: port})

    def seed_ledger(self, target: ExternalTarget) -> AbstractContextManager[SeedLedger] | None:
        """External mode with many runners: a lock held in this running server, and the record
        of which services were seeded with which key, for seeding the stack once (None: this
        service cannot hold one). The lock must end with the holder's connection."""
        return None

    def external_exports(self, obj: Any) -> dict[str, str]:
        """Env vars that point external mode at this service's public object ``obj``."""
        url = getattr(obj, "url", None) or f"{obj.host}:{obj.port}"
        return {self.external_env: str(url)}

    def internal_exports(self, obj: Any) -> dict[str, str]:
        """The variables of :meth:`external_exports` with in-network addresses: what a container
        on the stack network (``aikernel_container``) reads to reach ``obj``'s server. The
        default reuses :meth:`external_exports` on a copy of ``obj`` whose ``host``/``port`` are
        its ``internal_host``/``internal_port``; services with other address fields override it.
        """
        import dataclasses

        if not (
            dataclasses.is_dataclass(obj)
            and not isinstance(obj, type)
            and hasattr(obj, "internal_host")
            and hasattr(obj, "internal_port")
        ):
            raise NotImplementedError(
                f"{self.name}: {type(obj).__name__} has no internal_host/internal_port; the "
                "service module must override Service.internal_exports"
            )
        return self.external_exports(
            dataclasses.replace(obj, host=obj.internal_host, port=obj.internal_port)
        )

    def metrics(self, ctx: StackContext) -> MetricsEndpoint | None:
        """The service's Prometheus metrics endpoint, if it has one (scraped by Prometheus)."""
        return None

    # ---- snapshots (docs/snapshots.md) -------------------------------------------------------

    #: the data directories that hold the seeded state: a snapshot image keeps them, and a
    #: later cold start of the same key starts from it without seeding (empty: no snapshots)
    snapshot_paths: ClassVar[tuple[str, ...]] = ()
    #: files in those directories that belong to the running server (lock files), not copied
    snapshot_exclude: ClassVar[tuple[str, ...]] = ()

    def before_snapshot(self, ctx: StackContext, running: Running) -> tuple[str, ...]:
        """Make the data directories complete on disk before the container is paused and
        copied (PostgreSQL: a checkpoint); return further files not to copy (relative to the
        data directory), e.g. preallocated log segments."""
        return ()

    def snapshot_spec(self, spec: ContainerSpec, root: str) -> ContainerSpec:
        """``spec`` for a start from a snapshot image that holds each data directory ``path``
        at ``root + path`` (the service points its server there, e.g. PGDATA)."""
        raise NotImplementedError(f"{self.name}: snapshot_paths without snapshot_spec")

    def snapshot_secrets(self, ctx: StackContext) -> dict[str, str]:
        """The secrets of this stack that the seeded state holds (a role's password), by their
        names in ``ctx.secrets``: the snapshot image keeps them as labels, and a start from it
        gets them as ``held`` to log in with before it sets this stack's."""
        return {}

    def snapshot_probe(self, ctx: StackContext, running: Running, held: Mapping[str, str]) -> None:
        """The readiness probe of a container started from a snapshot: first make the server
        take this stack's secrets (the snapshot has those of the stack that made it, given
        as ``held``), then :meth:`probe`. Raise SnapshotUnusable for a snapshot that can
        never be used (the stack removes it and seeds instead)."""
        self.probe(ctx, running)

    # ---- faults (faults.py) ----------------------------------------------------------------

    #: a replica that ``promote()`` can make a primary
    can_promote: ClassVar[bool] = False

    def promote(self, ctx: StackContext, running: Running) -> None:
        """Make this replica a writable primary (only where ``can_promote``)."""
        raise NotImplementedError

    def unpromote(self, ctx: StackContext, running: Running) -> bool:
        """Make a promoted replica a replica again, in place; False when its container must be
        made again (the stack then recreates it from :meth:`container`). Called after every
        test that faulted the service: a replica that is still one returns True at once."""
        return True

    def after_restart(self, ctx: StackContext, running: Running) -> None:  # noqa: B027
        """The container was started again after a stop or kill: put back what the server does
        not keep (Vault in dev mode: its entries and seed)."""

    def settle(self, ctx: StackContext, running: Running) -> None:
        """Return once the service is back in its normal state after a fault of it or of a
        service it depends on; raise while it is not (retried). Default: the readiness probe."""
        self.probe(ctx, running)

    #: why a Toxiproxy proxy cannot stand in front of this service ("" where it can)
    not_proxied: ClassVar[str] = ""

    def proxied(self, obj: Any, routes: Mapping[int, Route]) -> Any:
        """``obj`` (this service's public object) with its addresses replaced by ``routes``
        (container port -> the proxy's host side and in-network address), for network faults.
        The default handles objects with ``host``/``port``/``internal_host``/``internal_port``
        fields and one port; services with other fields override it, or raise FaultError where
        a proxy in front of them cannot work."""
        import dataclasses

        from ..errors import FaultError

        names = (
            {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        )
        if len(routes) != 1 or not {"host", "port", "internal_host", "internal_port"} <= names:
            raise FaultError(f"{self.name}: its object cannot be given proxied addresses")
        (route,) = routes.values()
        return dataclasses.replace(
            obj,
            host=route.host,
            port=route.port,
            internal_host=route.internal_host,
            internal_port=route.internal_port,
        )

    def on_stack_grew(  # noqa: B027 - optional hook
        self, ctx: StackContext, running: Running, added: frozenset[str]
    ) -> None:
        """Services were added to a running stack (started on demand after this one)."""


def mebibytes(size: str) -> int:
    """A memory size as the settings accept it (``256m``, ``1g``, ``524288k``, bytes) in MiB,
    rounded up."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = size.strip().lower()
    factor = units.get(text[-1:], 1)
    number = int(text[:-1] if text[-1:] in units else text)
    return -(-number * factor // (1 << 20))


def endpoint_entry(running: Running, port: int, **extra: Any) -> dict[str, Any]:
    """The common part of a Vault entry: host side and in-network address of ``port``."""
    return {
        "host": running.host,
        "port": running.host_port(port),
        "internal_host": running.internal_host,
        "internal_port": port,
        **extra,
    }


@dataclass(frozen=True)
class Endpoint:
    """A service's address: ``host:port`` from the test process, ``internal_host:internal_port``
    from containers on the stack network. Subclasses set ``internal_port``'s default."""

    host: str
    port: int
    internal_host: str
    internal_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def internal_address(self) -> str:
        return f"{self.internal_host}:{self.internal_port}"


@dataclass(frozen=True)
class HttpService(Endpoint):
    """A service spoken to over HTTP: ``url`` and ``internal_url``."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://{self.internal_host}:{self.internal_port}"


class MaskedRepr:
    """Dataclass mixin: fields listed in ``_secret_fields`` show masked in ``repr``."""

    _secret_fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):  # type: ignore[arg-type]
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in self._secret_fields and isinstance(value, str):
                parts.append(f"{f.name}={mask_value(value)!r}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
