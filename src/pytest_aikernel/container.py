"""The service under test: the user's own image, run on the stack's network.

``aikernel_container`` (removed after the test) and ``aikernel_session_container`` (started once
per set of arguments, removed after the session) are factories::

    def test_items(aikernel_redis, aikernel_container):
        api = aikernel_container("registry.example/api:1.4", ports=(8080,), wait="/health")
        assert urllib.request.urlopen(api.url + "/items").status == 200

The container joins the stack's network under its ``name`` (its ``internal_host``) and gets, unless
``stack_env=False``, the external-mode variables of every running service with their in-network
addresses (``AIKERNEL_REDIS_URL=redis://:...@redis:6379/0``, see :meth:`Stack.environment`): a
service that reads them works unchanged. Its ``ports`` are published on 127.0.0.1.

Lifecycle: the containers carry the plugin's labels, with a session of their own per process
(``u<12 hex>``) and this process as owner. That session is registered with Ryuk before the first
start, so the containers of a killed run are reaped (else the next session's sweeper removes
them). The stack's network is joined, never removed: the stack's lease owns it.

A failing test gets the logs of its containers in its report, one section per container
(:func:`pytest_runtest_makereport`).

Importing this module imports neither pytest nor docker-py (the package re-exports its types).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shlex
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import pluggy

from .errors import (
    AikernelError,
    ConfigError,
    ContainerArgumentError,
    ContainerExited,
    DockerUnavailable,
    ImageUnavailable,
    ServiceError,
    ServiceStartTimeout,
)
from .runtime.docker import LABEL_OWNER, LABEL_SERVICE, LABEL_SESSION, Owner

if TYPE_CHECKING:
    import pytest
    from docker.models.containers import Container

    from .stack import Stack

#: pytest's own hook marker (``pytest.hookimpl``), without importing pytest here
_hookimpl = pluggy.HookimplMarker("pytest")

#: how often a wait is checked, and the container looked at for having exited (seconds)
POLL_INTERVAL = 0.05
DEFAULT_TIMEOUT = 60.0
#: log lines in error messages
LOG_TAIL = 50
#: log lines per container in a failing test's report
REPORT_TAIL = 1000
SESSION_FIXTURE = "aikernel_session_container"
#: a network alias: one DNS label
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


# ---- waits ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """When a started container counts as ready. Make one with a class method:

    * ``Wait.running()``: the container runs (the default, ``wait=None``);
    * ``Wait.port(8080)``: a TCP connection to the published port is accepted and not closed at
      once (``wait=8080``);
    * ``Wait.http("/health", port=None, status=None)``: ``GET`` on the first published port (or
      ``port``) answers 2xx/3xx, or exactly ``status`` (``wait="/health"``);
    * ``Wait.log("started on port \\d+")``: a log line matches the regular expression
      (``re.search``, multi-line; ``wait="log:REGEX"``).
    """

    kind: Literal["running", "port", "http", "log"] = "running"
    #: the container port a port or HTTP wait connects to (through its published host port)
    container_port: int | None = None
    path: str = "/"
    status: int | None = None
    pattern: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("running", "port", "http", "log"):
            raise ContainerArgumentError(
                f"Wait(kind={self.kind!r}): the kinds are running, port, http and log"
            )
        if self.container_port is not None or self.kind == "port":
            _check_port(self.container_port, f"Wait.{self.kind}")
        if self.kind == "http" and not (isinstance(self.path, str) and self.path.startswith("/")):
            raise ContainerArgumentError(
                f"Wait.http({self.path!r}): the path starts with '/', e.g. Wait.http('/health')"
            )
        if self.status is not None and (
            isinstance(self.status, bool)
            or not isinstance(self.status, int)
            or not 100 <= self.status <= 599
        ):
            raise ContainerArgumentError(
                f"Wait.http(status={self.status!r}): an HTTP status code (100-599), or None for "
                "any 2xx/3xx answer"
            )
        if self.kind == "log":
            if not isinstance(self.pattern, str) or not self.pattern:
                raise ContainerArgumentError(
                    f"Wait.log({self.pattern!r}): a non-empty regular expression"
                )
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ContainerArgumentError(
                    f"Wait.log({self.pattern!r}): not a valid regular expression ({exc})"
                ) from None

    @classmethod
    def running(cls) -> Wait:
        """Ready as soon as the container runs."""
        return cls("running")

    @classmethod
    def port(cls, port: int) -> Wait:
        """Ready when the published ``port`` (a container port) accepts a TCP connection."""
        return cls("port", container_port=port)

    @classmethod
    def http(cls, path: str = "/", *, port: int | None = None, status: int | None = None) -> Wait:
        """Ready when ``GET path`` answers 2xx/3xx (or ``status``), on the first or ``port``."""
        return cls("http", container_port=port, path=path, status=status)

    @classmethod
    def log(cls, pattern: str) -> Wait:
        """Ready when a log line matches ``pattern`` (a regular expression, ``re.search``)."""
        return cls("log", pattern=pattern)

    def __str__(self) -> str:
        if self.kind == "port":
            return f"wait for TCP port {self.container_port}"
        if self.kind == "http":
            port = self.container_port if self.container_port is not None else "the first port"
            answer = str(self.status) if self.status is not None else "2xx/3xx"
            return f"wait for HTTP GET {self.path} on {port} to answer {answer}"
        if self.kind == "log":
            return f"wait for a log line matching {self.pattern!r}"
        return "wait for the container to run"


#: what ``wait=`` takes: a Wait, or its short forms (see :class:`Wait`)
WaitLike = Wait | int | str | None


def _check_port(port: object, where: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ContainerArgumentError(f"{where}: {port!r} is not a TCP port number (1-65535)")
    return port


def as_wait(wait: WaitLike) -> Wait:
    """``wait`` as a :class:`Wait`; ContainerArgumentError for anything else."""
    if wait is None:
        return Wait.running()
    if isinstance(wait, Wait):
        return wait
    if isinstance(wait, int) and not isinstance(wait, bool):
        return Wait.port(wait)
    if isinstance(wait, str):
        if wait.startswith("/"):
            return Wait.http(wait)
        if wait.startswith("log:"):
            return Wait.log(wait[4:])
    raise ContainerArgumentError(
        f"wait={wait!r}: expected None (the container runs), a container port (wait=8080), an "
        "HTTP path (wait='/health'), 'log:REGEX' (wait='log:listening') or a Wait "
        "(Wait.http('/health', status=200), Wait.log('started'), Wait.port(8080))"
    )


# ---- the container -------------------------------------------------------------------------------


class ExecResult(NamedTuple):
    """What :meth:`ServiceContainer.exec` returns."""

    exit_code: int
    #: stdout and stderr, interleaved
    output: str


@dataclass(frozen=True)
class ServiceContainer:
    """The user's container on the stack network: ``url``, ``port(container_port)``, logs.

    ``host`` is 127.0.0.1 (the published ports' address); ``internal_host`` is its network alias,
    for other containers of the stack; ``env`` is the environment it was started with.
    """

    name: str
    image: str
    container_id: str
    host: str
    #: container port -> host port on 127.0.0.1, in the order of ``ports=``
    ports: Mapping[int, int]
    internal_host: str
    env: Mapping[str, str] = field(repr=False)
    _raw: Container = field(repr=False, compare=False)

    def port(self, container_port: int) -> int:
        """The host port on 127.0.0.1 that ``container_port`` is published on."""
        __tracebackhide__ = True
        try:
            return self.ports[container_port]
        except (KeyError, TypeError):
            raise ContainerArgumentError(
                f"container {self.name}: port {container_port!r} is not published (ports="
                f"{tuple(self.ports)}); add it to ports= of aikernel_container"
            ) from None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<host port>`` of the first published port."""
        __tracebackhide__ = True
        return f"http://{self.host}:{self.port(self._first_port())}"

    @property
    def internal_url(self) -> str:
        """``http://<name>:<port>`` of the first port, for other containers on the network."""
        __tracebackhide__ = True
        return f"http://{self.internal_host}:{self._first_port()}"

    def _first_port(self) -> int:
        __tracebackhide__ = True
        for port in self.ports:
            return port
        raise ContainerArgumentError(
            f"container {self.name} publishes no port, so it has no URL; pass ports=(8080,) to "
            "aikernel_container"
        )

    def logs(self, tail: int | None = None) -> str:
        """Its output so far (stdout and stderr), or the last ``tail`` lines of it."""
        __tracebackhide__ = True
        try:
            data: bytes = self._raw.logs(tail="all" if tail is None else tail)
        except Exception as exc:
            raise ServiceError(
                f"container:{self.name}", f"container {self.name}: no logs ({_short(exc)})"
            ) from None
        return data.decode("utf-8", errors="replace")

    def exec(self, cmd: str | Sequence[str]) -> ExecResult:
        """Run ``cmd`` in the running container (``docker exec``); its exit code and output."""
        __tracebackhide__ = True
        try:
            code, output = self._raw.exec_run(cmd if isinstance(cmd, str) else list(cmd))
        except Exception as exc:
            raise ServiceError(
                f"container:{self.name}",
                f"container {self.name}: could not run {cmd!r} in it ({_short(exc)})",
            ) from None
        text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else ""
        return ExecResult(int(code if code is not None else -1), text)


class ContainerFactory(Protocol):
    """The type of the ``aikernel_container`` and ``aikernel_session_container`` fixtures."""

    def __call__(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        ports: Sequence[int] = (),
        wait: WaitLike = None,
        command: str | Sequence[str] | None = None,
        name: str | None = None,
        stack_env: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ServiceContainer: ...


# ---- arguments -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Args:
    image: str
    env: tuple[tuple[str, str], ...]
    ports: tuple[int, ...]
    wait: Wait
    command: tuple[str, ...] | None
    name: str | None
    stack_env: bool
    timeout: float

    @property
    def key(self) -> tuple[Any, ...]:
        """What a session container is found again by (the timeout does not shape it)."""
        return (
            self.image,
            self.env,
            self.ports,
            self.wait,
            self.command,
            self.name,
            self.stack_env,
        )


def _arguments(
    *,
    image: object,
    env: object,
    ports: object,
    wait: object,
    command: object,
    name: object,
    stack_env: object,
    timeout: object,
) -> _Args:
    """The factory's arguments, checked before anything starts; ContainerArgumentError."""
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ContainerArgumentError(
            f"image={image!r}: an image reference such as 'registry.example/api:1.4'"
        )
    pairs: list[tuple[str, str]] = []
    if env is not None:
        if not isinstance(env, Mapping):
            raise ContainerArgumentError(f"env={env!r}: a mapping of names to string values")
        for key, value in env.items():
            if not isinstance(key, str) or not key or "=" in key:
                raise ContainerArgumentError(f"env: {key!r} is not an environment variable name")
            if not isinstance(value, str):
                raise ContainerArgumentError(
                    f"env[{key!r}]: {value!r} is a {type(value).__name__}; environment values "
                    f"are strings (str({value!r}))"
                )
            pairs.append((key, value))
    if isinstance(ports, (int, str)) or not isinstance(ports, Sequence):
        raise ContainerArgumentError(
            f"ports={ports!r}: a sequence of container ports, e.g. ports=(8080,)"
        )
    checked = tuple(_check_port(p, f"ports={tuple(ports)!r}") for p in ports)
    if len(set(checked)) != len(checked):
        raise ContainerArgumentError(f"ports={checked!r}: a port is listed twice")
    the_wait = as_wait(wait)  # type: ignore[arg-type]
    if the_wait.kind == "port" and the_wait.container_port not in checked:
        raise ContainerArgumentError(
            f"{the_wait}: port {the_wait.container_port} is not in ports={checked!r}; a port "
            "wait connects to a published port: add it to ports="
        )
    if the_wait.kind == "http":
        if not checked:
            raise ContainerArgumentError(
                f"{the_wait}: the container publishes no port; pass ports=(8080,) for it"
            )
        if the_wait.container_port is not None and the_wait.container_port not in checked:
            raise ContainerArgumentError(
                f"{the_wait}: port {the_wait.container_port} is not in ports={checked!r}"
            )
    argv: tuple[str, ...] | None = None
    if isinstance(command, str):
        argv = tuple(shlex.split(command))
    elif command is not None:
        if not isinstance(command, Sequence) or not all(isinstance(a, str) for a in command):
            raise ContainerArgumentError(
                f"command={command!r}: a string or a sequence of strings (the image's CMD)"
            )
        argv = tuple(command)
    if argv is not None and not argv:
        raise ContainerArgumentError(f"command={command!r} is empty; leave it None for the CMD")
    if name is not None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ContainerArgumentError(
                f"name={name!r}: the network alias is one DNS label: lower-case letters, digits "
                "and '-', at most 63 characters, not starting or ending with '-'"
            )
        from . import services as registry_mod

        if name in registry_mod.names():
            raise ContainerArgumentError(
                f"name={name!r} is the network alias of the stack's {name} service; choose "
                "another name"
            )
    if not isinstance(stack_env, bool):
        raise ContainerArgumentError(f"stack_env={stack_env!r}: True or False")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ContainerArgumentError(f"timeout={timeout!r}: seconds, more than 0")
    return _Args(
        image=image,
        env=tuple(sorted(pairs)),
        ports=checked,
        wait=the_wait,
        command=argv,
        name=name,
        stack_env=stack_env,
        timeout=float(timeout),
    )


def _default_name(image: str) -> str:
    """A unique alias from the image's name: ``registry:5000/team/api:1.4`` -> ``api-3fa2c1``."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    base = re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")[:40].strip("-") or "service"
    return f"{base}-{secrets.token_hex(3)}"


def _short(exc: BaseException) -> str:
    from .runtime.docker import _short as short

    return short(exc)


# ---- this process's containers -------------------------------------------------------------------


def _reload(raw: Any, name: str, image: str, what: str = "container") -> None:
    """Refresh a container's state; a container removed under us (``docker rm``, a reaper)
    is a ContainerExited naming it, never a raw docker-py error."""
    try:
        raw.reload()
    except Exception as exc:
        raise ContainerExited(
            f"container:{name}", f"{what} {name} ({image}) is gone ({_short(exc)})"
        ) from None


class _Hub:
    """This process's service containers: their session (labels, Ryuk), the names in use and
    the session-scoped ones by their arguments."""

    def __init__(self, stack: Stack) -> None:
        from .runtime.docker import new_session_id

        self.stack = stack
        self.session_id = f"u{new_session_id()}"
        self.owner = Owner.current()
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._prepared = False
        self._names: set[str] = set()
        #: container id -> container, for every container started and not yet removed
        self._live: dict[str, ServiceContainer] = {}
        self._session: dict[tuple[Any, ...], ServiceContainer] = {}

    @property
    def session_containers(self) -> list[ServiceContainer]:
        with self._lock:
            return list(self._session.values())

    def mask(self, text: str) -> str:
        return self.stack.secrets.mask(text)

    # ---- start ----

    def start(self, args: _Args) -> ServiceContainer:
        name = args.name or _default_name(args.image)
        with self._lock:
            if name in self._names:
                raise ContainerArgumentError(
                    f"name={name!r} is already used by another container of this process "
                    "(aikernel_container or aikernel_session_container); choose another name"
                )
            self._names.add(name)
        try:
            self._prepare()
            self._ensure_image(args.image, name)
            if args.name is not None:
                self._check_name_free(name)
            return self._run(args, name)
        except BaseException:
            with self._lock:
                self._names.discard(name)
            raise

    def session_container(self, args: _Args) -> ServiceContainer:
        with self._session_lock:
            with self._lock:
                found = self._session.get(args.key)
            if found is not None:
                self._check_still_runs(found)
                return found
            started = self.start(args)
            with self._lock:
                self._session[args.key] = started
            return started

    def _prepare(self) -> None:
        """Once: the engine, Ryuk for this process's containers, the stack's network."""
        with self._prepare_lock:
            if self._prepared:
                return
            from .lease import XdistLease
            from .runtime import reaper
            from .shared import locked
            from .stack import StackEvent

            stack = self.stack
            if stack.runtime.kind != "docker":
                raise AikernelError(
                    "services under test (aikernel_container) need the Docker runtime; this "
                    "run uses --aikernel-runtime kubernetes (deploy the service to the stack's "
                    f"namespace yourself, {stack.runtime.network_name}, or run with docker)"
                )
            stack.runtime.client  # noqa: B018 - DockerUnavailable here, before anything else
            why = reaper.register({LABEL_SESSION: self.session_id})
            if stack.lease.kind == "plain":
                # a plain stack that started no service yet has no Ryuk filter of its own
                why = reaper.register({LABEL_SESSION: stack.session_id}) or why
            if why and not reaper.disabled_reason():
                stack.emit(StackEvent("note", detail=reaper.status()))
            if isinstance(stack.lease, XdistLease):
                # under the run's lock: the controller removes the run's network only when
                # some worker took that lock
                with locked(stack.lease.folder):
                    stack.runtime.create_network()
            else:
                stack.runtime.create_network()
            self._prepared = True

    def _ensure_image(self, image: str, name: str) -> None:
        import docker.errors

        client = self.stack.runtime.client
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise ImageUnavailable(
                f"container:{name}",
                f"container {name}: cannot inspect the image {image!r} ({_short(exc)})",
            ) from None
        try:
            client.images.pull(image)
        except Exception as exc:
            raise ImageUnavailable(
                f"container:{name}",
                f"container {name}: the image {image!r} is not in the Docker engine and could "
                f"not be pulled ({_short(exc)}). Build it first (docker build -t {image} .), or "
                f"pull it (docker pull {image}, after docker login for a private registry), or "
                "pass aikernel_container the image your build produced.",
            ) from None

    def _check_name_free(self, name: str) -> None:
        """A running container of another process with the same alias on this network would
        share its DNS name (xdist workers, runs sharing a reused stack)."""
        client = self.stack.runtime.client
        try:
            others = client.containers.list(
                filters={
                    "label": [f"{LABEL_SERVICE}=container:{name}"],
                    "network": [self.stack.runtime.network_name],
                }
            )
        except Exception:
            return
        for other in others:
            labels = other.labels or {}
            if labels.get(LABEL_SESSION) == self.session_id:
                continue
            owner = Owner.parse(labels.get(LABEL_OWNER, ""))
            who = owner.describe() if owner else "another process"
            raise ContainerArgumentError(
                f"name={name!r} is taken on the stack network {self.stack.runtime.network_name} "
                f"by a container of {who} (another xdist worker, or a run sharing the reused "
                "stack); choose a name unique per process, e.g. f'api-{worker_id}', or leave "
                "name unset for a unique one"
            )

    def _run(self, args: _Args, name: str) -> ServiceContainer:
        from docker.types import EndpointConfig

        runtime = self.stack.runtime
        client = runtime.client
        network = runtime.network_name
        service = f"container:{name}"
        env = {**(self.stack.environment(internal=True) if args.stack_env else {})}
        env.update(args.env)
        labels = {
            **runtime.labels(service),
            LABEL_SESSION: self.session_id,
            LABEL_OWNER: self.owner.label(),
        }
        # a reused stack's project label would make `aikernel down` (which removes a project's
        # leftovers by that label) remove this process's containers too
        from .lease import LABEL_PROJECT

        labels.pop(LABEL_PROJECT, None)
        kwargs: dict[str, Any] = {
            "name": f"aikernel-{self.session_id}-{name}",
            "labels": labels,
            "environment": env,
            # (address,) = an ephemeral host port on the bind address (loopback on a local
            # engine; docker-py's binding form)
            "ports": {f"{port}/tcp": (self.stack.runtime.engine.bind,) for port in args.ports},
            "network": network,
            "networking_config": {network: EndpointConfig(client.api.api_version, aliases=[name])},
            "detach": True,
        }
        if args.command is not None:
            kwargs["command"] = list(args.command)
        try:
            raw: Container = client.containers.create(args.image, **kwargs)
        except Exception as exc:
            raise ServiceError(
                service,
                self.mask(
                    f"container {name}: could not create a container from {args.image!r} "
                    f"({_short(exc)})"
                ),
            ) from None
        try:
            return self._start_and_wait(raw, args, name, env)
        except BaseException:
            with contextlib.suppress(Exception):
                raw.remove(force=True, v=True)
            raise

    def _start_and_wait(
        self, raw: Container, args: _Args, name: str, env: Mapping[str, str]
    ) -> ServiceContainer:
        service = f"container:{name}"
        try:
            raw.start()
        except Exception as exc:
            raise ServiceError(
                service,
                self.mask(
                    f"container {name}: {args.image!r} did not start ({_short(exc)}); check the "
                    f"image and command={list(args.command) if args.command else None!r}"
                    + self._log_block(raw, name)
                ),
            ) from None
        started = time.monotonic()
        _reload(raw, name, args.image)
        self._raise_if_exited(raw, args, name, started)
        from .runtime.docker import _published_ports

        engine = self.stack.runtime.engine
        if engine.attached:  # pytest on the stack network: the container's own ports
            host, ports = name, {p: p for p in args.ports}
        else:
            host, ports = engine.host, _published_ports(raw.attrs, args.ports)
        missing = [p for p in args.ports if p not in ports]
        if missing:
            raise ServiceError(
                service,
                f"container {name}: Docker reports no host port on {engine.bind} for container "
                f"port(s) {', '.join(map(str, missing))}",
            )
        container = ServiceContainer(
            name=name,
            image=args.image,
            container_id=str(raw.id),
            host=host,
            ports={p: ports[p] for p in args.ports},
            internal_host=name,
            env=dict(env),
            _raw=raw,
        )
        self._wait(container, args, started)
        with self._lock:
            self._live[container.container_id] = container
        return container

    # ---- waiting ----

    def _wait(self, container: ServiceContainer, args: _Args, started: float) -> None:
        wait = args.wait
        raw = container._raw
        deadline = started + args.timeout
        last = "not checked yet"
        while True:
            if wait.kind == "running":
                return
            last = _check(wait, container, raw, max(min(deadline - time.monotonic(), 2.0), 0.05))
            if not last:
                return
            _reload(raw, container.name, args.image)
            self._raise_if_exited(raw, args, container.name, started, wait)
            now = time.monotonic()
            if now >= deadline:
                raise ServiceStartTimeout(
                    f"container:{container.name}",
                    self.mask(
                        f"container {container.name} ({args.image}): {wait} did not pass within "
                        f"{args.timeout:g} s (timeout={args.timeout:g} of aikernel_container); "
                        f"last check: {last}.\nRaise timeout=, fix the wait, or look at the logs:"
                        + self._log_block(raw, container.name)
                    ),
                )
            time.sleep(POLL_INTERVAL)

    def _raise_if_exited(
        self, raw: Container, args: _Args, name: str, started: float, wait: Wait | None = None
    ) -> None:
        state = raw.attrs.get("State", {})
        if state.get("Running", False) or state.get("Status") == "created":
            return
        why = f"exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            why += " (killed: out of memory)"
        if state.get("Error"):
            why += f" ({state['Error']})"
        when = f", {time.monotonic() - started:.1f} s after it started"
        if wait is not None and wait.kind != "running":
            when += f", before its {wait} passed"
        raise ContainerExited(
            f"container:{name}",
            self.mask(
                f"container {name} ({args.image}) {why}{when}. Check the image, its command "
                "and its environment (env=, stack_env=)." + self._log_block(raw, name)
            ),
        )

    def _check_still_runs(self, container: ServiceContainer) -> None:
        raw = container._raw
        _reload(raw, container.name, container.image, "session container")
        state = raw.attrs.get("State", {})
        if state.get("Running", False):
            return
        raise ContainerExited(
            f"container:{container.name}",
            self.mask(
                f"session container {container.name} ({container.image}) exited with code "
                f"{state.get('ExitCode')} after an earlier test started it; it is not restarted."
                + self._log_block(raw, container.name)
            ),
        )

    def _log_block(self, raw: Container, name: str) -> str:
        try:
            data: bytes = raw.logs(tail=LOG_TAIL)
            text = data.decode("utf-8", errors="replace").rstrip()
        except Exception as exc:
            text = f"(logs unavailable: {_short(exc)})"
        shown = "\n".join(f"  | {line}" for line in text.splitlines()) or "  | (no output)"
        return f"\nLast {LOG_TAIL} log lines of container {name} ({str(raw.id)[:12]}):\n{shown}"

    # ---- removal ----

    def remove(self, containers: Sequence[ServiceContainer]) -> None:
        for container in containers:
            with self._lock:
                self._live.pop(container.container_id, None)
                self._names.discard(container.name)
            with contextlib.suppress(Exception):
                container._raw.remove(force=True, v=True)

    def remove_session_containers(self) -> None:
        with self._lock:
            found = list(self._session.values())
            self._session.clear()
        self.remove(found)

    def close(self) -> None:
        """Remove every container of this process's session (also what escaped bookkeeping)."""
        with self._lock:
            left = list(self._live.values())
            self._session.clear()
        self.remove(left)
        if self._prepared:
            from .runtime.docker import remove_by_labels

            with contextlib.suppress(Exception):
                remove_by_labels(self.stack.runtime.client, {LABEL_SESSION: self.session_id})


# ---- the fixtures' halves ------------------------------------------------------------------------

_hubs: weakref.WeakKeyDictionary[Any, _Hub] = weakref.WeakKeyDictionary()
#: test item -> the containers its aikernel_container started
_by_item: weakref.WeakKeyDictionary[Any, list[ServiceContainer]] = weakref.WeakKeyDictionary()
#: test item -> when its setup began (time.time()), for the session containers' logs
_setup_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _hub(request: pytest.FixtureRequest, stack: Stack) -> _Hub:
    config = request.config
    hub = _hubs.get(config)
    if hub is None or hub.stack is not stack:
        hub = _Hub(stack)
        _hubs[config] = hub
        # on the session node, after the stack's fixture: runs before the stack is stopped
        request.session.addfinalizer(hub.close)
    return hub


class _Factory:
    """``aikernel_container`` / ``aikernel_session_container``: see :class:`ContainerFactory`."""

    def __init__(self, hub: _Hub, item: Any = None) -> None:
        self._hub = hub
        #: the test, for a function-scoped factory; None for the session's
        self._item = item
        self.started: list[ServiceContainer] = []

    def __repr__(self) -> str:
        fixture = "aikernel_container" if self._item is not None else SESSION_FIXTURE
        return f"<{fixture} on {self._hub.stack.runtime.network_name}>"

    def __call__(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        ports: Sequence[int] = (),
        wait: WaitLike = None,
        command: str | Sequence[str] | None = None,
        name: str | None = None,
        stack_env: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ServiceContainer:
        __tracebackhide__ = True
        settings = self._hub.stack.settings
        try:
            args = _arguments(
                image=image,
                env=env,
                ports=ports,
                wait=wait,
                command=command,
                name=name,
                stack_env=stack_env,
                timeout=timeout,
            )
            if self._hub.stack.external:
                from .settings import OPTIONS_BY_FIELD

                opt = OPTIONS_BY_FIELD["mode"]
                raise ConfigError(
                    f"aikernel_container runs {args.image} on the stack's network, and in "
                    f"external mode ({opt.cli} external, from {settings.source_of('mode')}) the "
                    "plugin runs no stack: use the docker mode for this test"
                )
            if self._item is None:
                return self._hub.session_container(args)
            container = self._hub.start(args)
        except DockerUnavailable as exc:
            _docker_missing(settings, exc)
            raise  # not reached: _docker_missing skips or fails the test
        except AikernelError as exc:
            # the test's line and the message; not the plugin's frames nor docker-py's
            raise exc.with_traceback(None) from None
        self.started.append(container)
        _by_item.setdefault(self._item, []).append(container)
        return container


def _docker_missing(settings: Any, exc: DockerUnavailable) -> None:
    """No engine: skip or fail the test, as ``--aikernel-docker-missing`` says."""
    import pytest

    from .settings import OPTIONS_BY_FIELD

    opt = OPTIONS_BY_FIELD["docker_missing"]
    source = settings.source_of("docker_missing")
    if settings.docker_missing == "skip":
        pytest.skip(
            f"pytest-aikernel: {exc} ({opt.cli}=skip, from {source}; use fail to make this an "
            "error)"
        )
    pytest.fail(
        f"pytest-aikernel: {exc} (failing because {opt.cli}=fail, from {source}; use skip to "
        "skip the tests that need Docker)",
        pytrace=False,
    )


@contextlib.contextmanager
def containers_for_test(request: pytest.FixtureRequest, stack: Stack) -> Iterator[_Factory]:
    """The body of the ``aikernel_container`` fixture: removes its containers after the test."""
    factory = _Factory(_hub(request, stack), item=request.node)
    try:
        yield factory
    finally:
        factory._hub.remove(factory.started)


@contextlib.contextmanager
def containers_for_session(request: pytest.FixtureRequest, stack: Stack) -> Iterator[_Factory]:
    """The body of the ``aikernel_session_container`` fixture: one container per set of
    arguments, removed after the session."""
    hub = _hub(request, stack)
    try:
        yield _Factory(hub)
    finally:
        hub.remove_session_containers()


# ---- failing tests show the logs -----------------------------------------------------------------


def _report_logs(container: ServiceContainer, hub: _Hub, since: float | None) -> str:
    try:
        kwargs: dict[str, Any] = {"tail": REPORT_TAIL}
        if since is not None:
            kwargs["since"] = since
        data: bytes = container._raw.logs(**kwargs)
        text = data.decode("utf-8", errors="replace").rstrip("\n")
    except Exception as exc:
        return f"(logs unavailable: {_short(exc)})"
    note = "" if since is None else "(a session container: the lines since this test began)\n"
    return note + (hub.mask(text) if text else "(no output)")


@_hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test's report gets a section per container it used: "aikernel container
    <name> logs" (its last lines; for a session container, those since the test began)."""
    report = yield
    if call.when == "setup":
        _setup_at[item] = call.start
    if not report.failed or call.when not in ("setup", "call"):
        return report
    hub = _hubs.get(item.config)
    if hub is None:
        return report
    shown: list[tuple[ServiceContainer, float | None]] = [(c, None) for c in _by_item.get(item, [])]
    if SESSION_FIXTURE in getattr(item, "fixturenames", ()):
        since = _setup_at.get(item, call.start) - 1.0  # a second of clock skew with the engine
        shown.extend((c, since) for c in hub.session_containers)
    for container, since_at in shown:
        report.sections.append(
            (f"aikernel container {container.name} logs", _report_logs(container, hub, since_at))
        )
    return report


# ---- checks --------------------------------------------------------------------------------------


def _check(wait: Wait, container: ServiceContainer, raw: Container, timeout: float) -> str:
    """An empty string when ``wait`` passes now, else what the check saw."""
    if wait.kind == "log":
        try:
            data: bytes = raw.logs()
        except Exception as exc:
            return f"logs unavailable ({_short(exc)})"
        text = data.decode("utf-8", errors="replace")
        return "" if re.search(wait.pattern, text, re.MULTILINE) else "no log line matched"
    port = wait.container_port
    if port is None:
        port = next(iter(container.ports))
    host_port = container.ports[port]
    if wait.kind == "port":
        return _tcp_check(container.host, host_port, timeout)
    return _http_check(container.host, host_port, wait.path, wait.status, timeout)


def _tcp_check(host: str, port: int, timeout: float) -> str:
    """A connection that is accepted and not closed at once. Docker's port proxy accepts every
    connection and closes it when nothing listens in the container: that counts as not ready."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(min(timeout, 0.2))
            try:
                data = sock.recv(1)
            except TimeoutError:
                return ""  # connected; the server waits for the client to speak
            if data:
                return ""
            return f"{host}:{port} accepted the connection and closed it (nothing listens yet)"
    except OSError as exc:
        return f"{host}:{port}: {type(exc).__name__}: {exc.strerror or exc}"


def _http_check(host: str, port: int, path: str, status: int | None, timeout: float) -> str:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        code = response.status
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {path}: {type(exc).__name__}: {str(exc) or 'no answer'}"
    finally:
        conn.close()
    if code == status or (status is None and 200 <= code < 400):
        return ""
    return f"GET {path} answered HTTP {code}"


__all__ = [
    "ContainerFactory",
    "ExecResult",
    "ServiceContainer",
    "Wait",
    "WaitLike",
    "as_wait",
]
