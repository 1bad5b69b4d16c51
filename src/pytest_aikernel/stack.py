"""The stack: orders services by their dependencies and starts them in parallel.

Each service starts as soon as its own dependencies are ready (futures, not levels). One failing
service stops the start: every container of the stack is removed and every failure is reported with
its service, image, elapsed time, the setting to change and the container's last log lines.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import services as registry_mod
from .errors import (
    AikernelError,
    ContainerExited,
    ServiceError,
    ServiceStartTimeout,
    SnapshotUnusable,
    StackStartError,
)
from .runtime import ContainerSpec, Running
from .runtime.docker import DockerRuntime, Owner, new_session_id
from .secrets import SecretStore
from .services import Service, StackContext, TestScope
from .settings import OPTIONS_BY_FIELD, Settings, env_name_for_image

if TYPE_CHECKING:
    from typing import TypeAlias

    from .faults import FaultBook
    from .lease import Lease
    from .runtime.kubernetes import KubernetesRuntime

    #: where a stack's containers run (an explicit alias: the modules import each other)
    Runtime: TypeAlias = DockerRuntime | KubernetesRuntime

#: readiness probes are retried this often (seconds)
POLL_INTERVAL = 0.05
#: how often a not-yet-ready container is checked for having exited (seconds). Each check asks
#: the engine for the whole container (an inspect): at 0.25 s that was ~55 requests while all
#: services started, CPU time the starting services could use; a container that exits is
#: still reported within a second
ALIVE_CHECK_INTERVAL = 1.0
LOG_TAIL = 50
#: external mode: how long a service that should already run may take to answer
EXTERNAL_TIMEOUT = 10.0


@dataclass(frozen=True)
class StackHooks:
    """Callbacks into the user's code (the plugin connects them to its pytest hooks)."""

    #: (service, spec) -> a changed spec, or None to keep it
    container: Callable[[str, ContainerSpec], ContainerSpec | None] = lambda _s, _c: None
    #: (service, public object, stack): the service is ready and seeded
    ready: Callable[[str, Any, Stack], None] = lambda _s, _o, _st: None
    #: the user implements ``pytest_aikernel_ready`` or ``pytest_aikernel_container``: what
    #: they do cannot be part of a snapshot's key, so no snapshot is made or used
    custom: bool = False


def make_runtime(
    settings: Settings,
    session_id: str,
    *,
    owner: Owner | None = None,
    extra_labels: Mapping[str, str] | None = None,
    network: str | None = None,
) -> Runtime:
    """The runtime the settings ask for (``--aikernel-runtime``)."""
    if settings.runtime == "kubernetes" and settings.mode != "external":
        from .runtime.kubernetes import KubernetesRuntime

        return KubernetesRuntime(
            session_id,
            owner=owner,
            extra_labels=extra_labels,
            context=settings.kube_context,
            prefix=settings.kube_namespace_prefix,
            startup_timeout=settings.startup_timeout,
            reused=owner is not None and owner.host == "reuse",
            access=settings.kube_access,
            node_address=settings.kube_node_address,
        )
    return DockerRuntime(
        session_id,
        owner=owner,
        extra_labels=extra_labels,
        network=network,
        bind=settings.bind_address,
        bind_source=settings.source_of("bind_address"),
    )


@dataclass(frozen=True)
class StackEvent:
    """Progress reported while the stack starts."""

    kind: str  # "ready", "swept", "started", "reused", "replaced", "note"
    service: str = ""
    #: seconds from the service's container start to ready (and seeded)
    elapsed: float = 0.0
    detail: str = ""


#: a snapshot that does not answer in this time is taken for broken (seconds)
SNAPSHOT_TIMEOUT = 30.0


@dataclass(frozen=True)
class _Snapshot:
    key: str
    #: the snapshot image when one exists ("": make one after seeding)
    tag: str
    #: the service's image and its id
    image: str
    base_id: str
    #: the secrets the snapshot's data holds (those of the stack that made it)
    held: Mapping[str, str] = dataclasses.field(default_factory=dict)


class _Aborted(Exception):
    """Raised in a service's thread when another service failed first."""


class Stack:
    """A running set of services. ``stack[name]`` is a service's public object.

    Who may start, grow and remove it is its lease's business (``lease.py``): a ``Stack(settings)``
    made directly is a plain one, owned by this process and removed by :meth:`stop`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        on_event: Callable[[StackEvent], None] | None = None,
        session_id: str | None = None,
        owner: Owner | None = None,
        extra_labels: Mapping[str, str] | None = None,
        hooks: StackHooks | None = None,
        lease: Lease | None = None,
        network: str | None = None,
    ) -> None:
        from .lease import PlainLease

        self.settings = settings
        self.hooks = hooks or StackHooks()
        self.session_id = session_id or new_session_id()
        self.runtime: Runtime = runtime or make_runtime(
            settings, self.session_id, owner=owner, extra_labels=extra_labels, network=network
        )
        #: who holds this stack: decides how it grows and what stop() removes
        self.lease: Lease = lease or PlainLease()
        self.lease.adopt_runtime(self)
        #: service -> extra container labels (reuse keys), set by the lease
        self.service_labels: Callable[[str], Mapping[str, str]] = lambda _name: {}
        #: services whose seeding another process did already (external mode under xdist)
        self.seeded_elsewhere: frozenset[str] = frozenset()
        self.secrets = SecretStore()
        self._registry = registry_mod.registry()
        self._on_event = on_event or (lambda _e: None)
        self._event_lock = threading.Lock()
        self._ctx = StackContext(
            settings=settings,
            secrets=self.secrets,
            services=frozenset(),
            describe=self._describe,
            put_file=self._put_file,
            published=self._published,
            exec=self._exec,
        )
        self._ready: dict[str, threading.Event] = {}
        self._closed = False
        #: seconds each service took from its container start to ready and seeded
        self.timings: dict[str, float] = {}
        #: time.monotonic() at which each service became ready (probe passed)
        self.ready_at: dict[str, float] = {}
        self._scopes = 0
        #: random per process: per-test names are unique across processes, runs and machines
        #: sharing one stack (the counter makes them unique within the process)
        self._run_token = secrets.token_hex(4)
        self._isolation_state: dict[str, dict[str, Any]] = {}
        self._faults: FaultBook | None = None
        #: service -> the snapshot it started from ("" when it was seeded)
        self.from_snapshot: dict[str, str] = {}
        #: set by whoever stops the stack right before its process ends (the plugin, at the
        #: session's end): a plain stack that Ryuk holds is then removed by a process of its
        #: own, and this one does not wait for the engine
        self.process_ends = False
        #: make each missing snapshot at once, in this process (the detached builder's stack);
        #: else a separate process makes it after :meth:`stop`
        self.snapshot_now = False
        #: service -> the key of the snapshot made in this process
        self.snapshots_made: dict[str, str] = {}
        #: seeded services whose snapshot is missing, made after :meth:`stop`
        self._snapshots_due: dict[str, _Snapshot] = {}
        atexit.register(self.stop)

    # ---- public mapping -----------------------------------------------------------------------

    @property
    def services(self) -> tuple[str, ...]:
        """Names of the services that run, in dependency order."""
        return tuple(registry_mod.start_order(self._ctx.exposed))

    def __contains__(self, name: object) -> bool:
        return name in self._ctx.exposed

    def __getitem__(self, name: str) -> Any:
        try:
            return self._ctx.exposed[name]
        except KeyError:
            pass
        if name not in self._registry:
            raise KeyError(
                f"{name!r} is not a pytest-aikernel service; known services: "
                f"{', '.join(self._registry)}"
            )
        raise KeyError(
            f"service {name!r} does not run in this stack (running: "
            f"{', '.join(self.services) or 'none'}); request the aikernel_"
            f"{name.replace('-', '_')} fixture or add it to @pytest.mark.aikernel_stack(...)"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.services)

    def __len__(self) -> int:
        return len(self._ctx.exposed)

    def test_scope(self, service: str, stem: str | None = None) -> TestScope:
        """The scope of one test for a per-test fixture of ``service``.

        ``stem`` is the test's name, shared by every per-test fixture of one test (the plugin
        keeps it on the test item); without it a new one is made: ``aik_<worker>_<n>_<8 hex>``,
        where the hex part is random per process: unique per test, process, run and machine.
        Its ``state`` is shared by all per-test fixtures of ``service`` in this process.
        """
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        digits = "".join(ch for ch in worker if ch.isdigit())
        if stem is None:
            with self._event_lock:
                self._scopes += 1
                count = self._scopes
            # a worker id is "gw<n>"; anything else is reduced to what a database name takes
            tag = "".join(ch for ch in worker.lower() if ch.isascii() and ch.isalnum()) or "w"
            stem = f"aik_{tag}_{count}_{self._run_token}"
        state = self._isolation_state.setdefault(service, {})
        return TestScope(name=stem, worker=worker, worker_index=int(digits or 0), state=state)

    def running(self, name: str) -> Running:
        """Where ``name``'s container runs (host ports, network alias, container id)."""
        return self._ctx.running[name]

    def vault_entry(self, name: str) -> Mapping[str, Any] | None:
        """What ``secret/aikernel/<name>`` in Vault holds for a running service (None: the
        service contributes no entry)."""
        return self._describe(name)

    def environment(self, internal: bool = True) -> dict[str, str]:
        """The external-mode variables (``AIKERNEL_REDIS_URL``, ...) of every running service:
        with ``internal``, its in-network address (for a container on the stack network), else
        its host side (for a process on this machine). A stack in external mode has no network
        of its own: both give the external addresses."""
        env: dict[str, str] = {}
        for name in self.services:
            svc, obj = self._registry[name], self._ctx.exposed[name]
            use_internal = internal and not self.external
            env.update(svc.internal_exports(obj) if use_internal else svc.external_exports(obj))
        return env

    def __repr__(self) -> str:
        return f"<aikernel Stack {self.session_id}: {', '.join(self.services) or 'empty'}>"

    # ---- start --------------------------------------------------------------------------------

    def start(self, names: Iterable[str]) -> None:
        """Have ``names`` and their dependencies in this stack: those that are missing are
        started (or attached, when another process of the same stack started them) through the
        stack's lease, under its lock."""
        if self._closed:
            raise AikernelError("this stack was stopped; it cannot start services again")
        requested = list(names)
        registry_mod.check_names(requested, "pytest-aikernel")
        if registry_mod.closure(requested) <= self._ctx.exposed.keys():
            return
        self.lease.grow(self, requested)

    def missing(self, names: Iterable[str]) -> list[str]:
        """The services of ``names`` (and their dependencies) not in this stack, in start order."""
        wanted = registry_mod.closure(names)
        return [n for n in registry_mod.start_order(wanted) if n not in self._ctx.exposed]

    def start_here(self, names: Iterable[str]) -> None:
        """Start the missing services of ``names`` in this process, in parallel (leases call
        this under their lock). A failure removes what this call started and raises
        StackStartError; services that ran before stay."""
        new = self.missing(names)
        if not new:
            return
        if not self.external:
            self.runtime.prepare_start(any(self._registry[n].in_network for n in new))
        grown = frozenset(self._ctx.exposed)
        self._ctx.services = self._ctx.services | frozenset(new)
        for name in new:
            self._ready[name] = threading.Event()
        stop = threading.Event()
        failures: list[ServiceError] = []
        pool = ThreadPoolExecutor(max_workers=len(new), thread_name_prefix="aikernel")
        futures: dict[Future[None], str] = {}
        try:
            for name in new:
                futures[pool.submit(self._bring_up, name, stop)] = name
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    exc = fut.exception()
                    if exc is None or isinstance(exc, _Aborted):
                        continue
                    stop.set()
                    failures.append(self._as_failure(futures[fut], exc))
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self.forget(new)
            raise
        pool.shutdown(wait=True)
        if failures:
            self.forget(new)
            raise StackStartError(
                failures, external=self.external, removed=self.runtime.removal_note
            )
        if grown:
            added = frozenset(new)
            for name in sorted(grown):
                try:
                    self._registry[name].on_stack_grew(self._ctx, self._ctx.running[name], added)
                except Exception as exc:  # e.g. Vault could not take the new entries
                    failures.append(self._as_failure(name, exc))
            if failures:
                self.forget(new)
                raise StackStartError(
                    failures, external=self.external, removed=self.runtime.removal_note
                )

    def forget(self, names: Iterable[str], *, remove: bool = True) -> None:
        """Drop ``names`` from the stack; with ``remove``, remove their containers too (a
        failed start), else leave them (an attached service that no longer answers)."""
        names = list(names)
        if remove and not self.external:
            self.runtime.remove(names)
        for name in names:
            self._ctx.running.pop(name, None)
            self._ctx.exposed.pop(name, None)
            self._ready.pop(name, None)
        self._ctx.services = self._ctx.services - frozenset(names)

    @property
    def external(self) -> bool:
        """External mode: the services run already; nothing is started or removed."""
        return self.settings.mode == "external"

    def _attach_external(self, svc: Service) -> Running:
        target = svc.external(os.environ)
        for key, value in target.secrets.items():
            self.secrets.add(key, value)
        return Running(
            service=svc.name,
            image="external",
            container_id="",
            host=target.host,
            ports=dict(target.ports),
            internal_host=target.host,
            started_at=time.monotonic(),
        )

    def _bring_up(self, name: str, stop: threading.Event, *, use_snapshot: bool = True) -> None:
        svc = self._registry[name]
        ctx = self._ctx
        for dep in svc.depends_on:
            self._wait_ready(dep, stop)
        if self.external:
            running = self._attach_external(svc)
            ctx.running[name] = running
            self._probe_until_ready(svc, running, stop)
            self.ready_at[name] = time.monotonic()
            if self.settings.seed_external and name not in self.seeded_elsewhere:
                for other in sorted(svc.seed_after(ctx)):
                    self._wait_ready(other, stop)
                svc.seed(ctx, running)
            seeded_here = self.settings.seed_external and name not in self.seeded_elsewhere
            self._finish(name, svc, running, freeze=seeded_here)
            return
        image = ctx.image(name)
        self.runtime.ensure_image(name, image, self._image_hint(name))
        if stop.is_set():
            raise _Aborted
        snapshot = self._snapshot_plan(name, svc, image) if use_snapshot else None
        for attempt in range(3):
            spec = svc.container(ctx)
            spec = self.hooks.container(name, spec) or spec
            if snapshot is not None and snapshot.tag:
                from .runtime.docker import SNAPSHOT_ROOT

                spec = dataclasses.replace(
                    svc.snapshot_spec(spec, SNAPSHOT_ROOT), image=snapshot.tag
                )
            try:
                running = self.runtime.start(name, spec, labels=self.service_labels(name))
                break
            except ServiceError as exc:
                # a fixed host port (Kafka's advertised one) was taken since it was chosen
                if not spec.host_ports or "port is already allocated" not in str(exc):
                    raise
                self.runtime.remove([name])
                if attempt == 2:
                    raise
        ctx.running[name] = running
        self._emit(StackEvent("started", name, detail=image))
        if snapshot is not None and snapshot.tag:
            try:
                held = snapshot.held
                self._probe_until_ready(
                    svc,
                    running,
                    stop,
                    probe=lambda ctx, r: svc.snapshot_probe(ctx, r, held),
                    limit=SNAPSHOT_TIMEOUT,
                )
            except (ContainerExited, ServiceStartTimeout, SnapshotUnusable) as exc:
                # a corrupt or foreign snapshot: remove it and seed as without one
                self.runtime.remove([name])
                self.runtime.remove_image(snapshot.tag)
                ctx.running.pop(name, None)
                self._emit(
                    StackEvent(
                        "note",
                        name,
                        detail=f"{name}: snapshot {snapshot.key} did not start "
                        f"({type(exc).__name__}); removed it, seeding instead",
                    )
                )
                self._bring_up(name, stop, use_snapshot=False)
                return
            self.ready_at[name] = time.monotonic()
            self.from_snapshot[name] = snapshot.key
            self._finish(name, svc, running, freeze=False)
            return
        self._probe_until_ready(svc, running, stop)
        self.ready_at[name] = time.monotonic()
        for other in sorted(svc.seed_after(ctx)):
            self._wait_ready(other, stop)
        svc.seed(ctx, running)
        self._finish(
            name,
            svc,
            running,
            freeze=True,
            snapshot=snapshot if snapshot is not None and not snapshot.tag else None,
        )

    def _finish(
        self,
        name: str,
        svc: Service,
        running: Running,
        *,
        freeze: bool,
        snapshot: _Snapshot | None = None,
    ) -> None:
        obj = self._control(name, svc.expose(self._ctx, running))
        self.hooks.ready(name, obj, self)
        if freeze:
            svc.freeze(self._ctx, running)
        self._ctx.exposed[name] = obj
        elapsed = time.monotonic() - running.started_at
        self.timings[name] = elapsed
        self._ready[name].set()
        shown = [f"{running.host}:{p}" for p in running.ports.values()]
        if len(shown) > 5:  # Toxiproxy's pool of proxy ports
            shown[4:] = [f"+{len(shown) - 4} more"]
        ports = ", ".join(shown)
        if name in self.from_snapshot:
            ports += f"; from snapshot {self.from_snapshot[name]}"
        self._emit(StackEvent("ready", name, elapsed=elapsed, detail=ports))
        if snapshot is None:
            return
        if self.snapshot_now:
            # the builder's own stack, which no test uses: copied before stop()
            self._make_snapshot(name, svc, running, snapshot)
            return
        # no test waits for a copy: a separate process seeds a stack of its own after this one
        # stops and keeps its state (the key covers everything that reaches it)
        self._snapshots_due[name] = snapshot
        from .runtime.snapbuild import last_failure

        failed = last_failure(name, snapshot.key)
        self._emit(
            StackEvent(
                "note",
                name,
                detail=f"{name}: snapshot {snapshot.key} is made by a separate process after "
                "this session; later cold starts begin from it"
                + (f" (the last attempt failed: {failed})" if failed else ""),
            )
        )

    # ---- snapshots ----------------------------------------------------------------------------

    def _snapshot_plan(self, name: str, svc: Service, image: str) -> _Snapshot | None:
        """The snapshot to start ``name`` from (``tag``), or to make after seeding (no tag);
        None where snapshots do not apply."""
        if not (self.settings.snapshots and svc.snapshot_paths) or self.hooks.custom:
            return None
        import hashlib

        from .lease import service_keys

        base_id = self.runtime.image_id(image)
        if not base_id:
            return None
        own = service_keys(self.settings, [name])[name]
        from .runtime.docker import SNAPSHOT_FORMAT

        key = hashlib.sha256(f"{own}:{base_id}:{SNAPSHOT_FORMAT}".encode()).hexdigest()[:16]
        tag, held = self.runtime.find_snapshot(name, key, base_id)
        for secret, value in held.items():  # masked in messages like this stack's own
            self._ctx.secrets.add(f"snapshot:{name}:{secret}", value)
        return _Snapshot(key=key, tag=tag, image=image, base_id=base_id, held=held)

    def _make_snapshot(self, name: str, svc: Service, running: Running, plan: _Snapshot) -> None:
        """Copy the seeded data directories now (the container paused for the copy) and build
        the image."""
        from . import __version__

        began = time.monotonic()
        try:
            transient = svc.before_snapshot(self._ctx, running)
            archives = self.runtime.capture(name, svc.snapshot_paths)
        except Exception as exc:
            self._emit(StackEvent("note", name, detail=f"{name}: no snapshot made ({exc})"))
            return

        try:
            self.runtime.build_snapshot(
                name,
                key=plan.key,
                base_image=plan.image,
                base_id=plan.base_id,
                archives=archives,
                exclude=(*svc.snapshot_exclude, *transient),
                secrets=svc.snapshot_secrets(self._ctx),
                version=__version__,
            )
            self.snapshots_made[name] = plan.key
            self._emit(
                StackEvent(
                    "note",
                    name,
                    detail=f"{name}: seeded state kept as snapshot {plan.key} (made in "
                    f"{time.monotonic() - began:.2f} s)",
                )
            )
        except Exception as exc:
            self._emit(StackEvent("note", name, detail=f"{name}: no snapshot made ({exc})"))

    def _exec(self, service: str, cmd: list[str], env: Mapping[str, str]) -> tuple[int, str]:
        if self.external:
            return 1, "external mode: no container"
        return self.runtime.exec(service, cmd, env)

    def _wait_ready(self, name: str, stop: threading.Event) -> None:
        event = self._ready[name]
        while not event.wait(POLL_INTERVAL):
            if stop.is_set():
                raise _Aborted

    def _probe_until_ready(
        self,
        svc: Service,
        running: Running,
        stop: threading.Event,
        *,
        probe: Callable[[StackContext, Running], None] | None = None,
        limit: float | None = None,
    ) -> None:
        check = probe or svc.probe
        timeout = self.settings.startup_timeout
        if limit is not None:
            timeout = min(timeout, limit)
        if self.external:
            # a running service answers at once; do not make a wrong address wait two minutes
            timeout = min(timeout, EXTERNAL_TIMEOUT)
        deadline = running.started_at + timeout
        next_alive_check = 0.0
        last_error: BaseException | None = None
        while True:
            if stop.is_set():
                raise _Aborted
            try:
                check(self._ctx, running)
                return
            except SnapshotUnusable:
                raise
            except Exception as exc:
                last_error = exc
            now = time.monotonic()
            if self.external and now >= deadline:
                raise ServiceStartTimeout(
                    svc.name,
                    f"{svc.name}: nothing answered at {running.host}:"
                    f"{', '.join(str(p) for p in running.ports.values())} within {timeout:g} s "
                    f"(external mode, {type(last_error).__name__}: {str(last_error).strip()}). "
                    f"Start it, or point env {svc.external_env} at it (default "
                    f"{svc.external_default}).",
                )
            if not self.external and now >= next_alive_check:
                self.runtime.check_alive(running)
                next_alive_check = now + ALIVE_CHECK_INTERVAL
            if now >= deadline:
                err = f"{type(last_error).__name__}: {str(last_error).strip()}"
                opt = OPTIONS_BY_FIELD["startup_timeout"]
                raise ServiceStartTimeout(
                    svc.name,
                    f"{svc.name} ({running.image}) was not ready after "
                    f"{now - running.started_at:.1f} s (startup timeout {timeout:g} s, from "
                    f"{self.settings.source_of('startup_timeout')}); last probe error: {err}.\n"
                    f"Raise it with {opt.cli} SECONDS (ini {opt.ini}, env {opt.env}) or check "
                    f"the image ({self._image_hint(svc.name)}).",
                )
            time.sleep(POLL_INTERVAL)

    def _image_hint(self, name: str) -> str:
        src = self.settings.source_of(f"images.{name}")
        now = f"currently set by {src}" if src != "default" else "currently the default image"
        return (
            f"--aikernel-image {name}=IMAGE, ini aikernel_images or env "
            f"{env_name_for_image(name)}; {now}"
        )

    def _as_failure(self, name: str, exc: BaseException) -> ServiceError:
        """Wrap any exception of a service's start into a ServiceError with logs, masked."""
        image = "external" if self.external else self._ctx.image(name)
        elapsed = ""
        running = self._ctx.running.get(name)
        if running is not None:
            elapsed = f" after {time.monotonic() - running.started_at:.1f} s"
        if isinstance(exc, ServiceError):
            text = str(exc)
            if isinstance(exc, ContainerExited):
                text += f"{elapsed}. Check the image ({self._image_hint(name)})."
            kind: type[ServiceError] = type(exc)
        else:
            text = f"{name} ({image}) failed{elapsed}: {type(exc).__name__}: {str(exc).strip()}"
            kind = ServiceError
        if running is not None and not self.external:
            logs = self.runtime.logs(name, tail=LOG_TAIL).rstrip()
            shown = "\n".join(f"  | {line}" for line in logs.splitlines()) or "  | (no output)"
            text += f"\nLast {LOG_TAIL} log lines of {name} ({running.container_id[:12]}):\n{shown}"
        return kind(name, self.secrets.mask(text))

    def _published(self, service: str, port: int) -> tuple[str, int] | None:
        """(host address, host port) at which the test process will reach container port
        ``port`` of ``service``, for a service that must advertise its host side (Kafka); None
        in attached mode, where the test process uses the service's alias."""
        if self.runtime.engine.attached:
            return None
        return self.runtime.publish(service, port)

    def _put_file(self, service: str, path: str, content: bytes) -> bool:
        if self.external:
            return False
        return self.runtime.put_file(service, path, content)

    def _describe(self, name: str) -> Mapping[str, Any] | None:
        return self._registry[name].vault_entry(self._ctx, self._ctx.running[name])

    def _emit(self, event: StackEvent) -> None:
        with self._event_lock, contextlib.suppress(Exception):
            self._on_event(event)

    # ---- faults -------------------------------------------------------------------------------

    @property
    def faults(self) -> FaultBook:
        """What this process's tests did to the services, and how it is undone (faults.py)."""
        with self._event_lock:
            if self._faults is None:
                from .faults import FaultBook

                self._faults = FaultBook(self)
            return self._faults

    def _control(self, name: str, obj: Any) -> Any:
        """Attach the fault calls of ``obj`` (a Faultable public object) to this stack."""
        from .faults import Faultable

        if isinstance(obj, Faultable):
            object.__setattr__(obj, "_aikernel_control", (self, name))
        return obj

    def dependents(self, name: str) -> list[str]:
        """The services of this stack that depend on ``name``, directly or not, in start order."""
        out: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            for other in self._ctx.exposed:
                if current in self._registry[other].depends_on and other not in out:
                    out.add(other)
                    todo.append(other)
        return [n for n in self.services if n in out]

    def wait_ready_again(self, name: str) -> None:
        """Probe ``name`` until it answers, as at its start (a fault restarted its container);
        ServiceStartTimeout after the startup timeout."""
        import dataclasses

        running = dataclasses.replace(self._ctx.running[name], started_at=time.monotonic())
        self._probe_until_ready(self._registry[name], running, threading.Event())

    def settle(self, name: str) -> None:
        """Wait until ``name`` is back in its normal state after a fault of it or of a service
        it depends on (a replica streaming again), within the startup timeout."""
        svc, running = self._registry[name], self._ctx.running[name]
        deadline = time.monotonic() + self.settings.startup_timeout
        while True:
            try:
                svc.settle(self._ctx, running)
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise ServiceStartTimeout(
                        name,
                        f"{name}: not back to normal {self.settings.startup_timeout:g} s after "
                        f"a fault ({type(exc).__name__}: {str(exc).strip()})",
                    ) from None
            time.sleep(POLL_INTERVAL)

    def rebuild(self, name: str) -> None:
        """Make ``name``'s container again from its spec (same name, alias and host ports), as
        a promoted replica needs; the lease's records follow."""
        svc = self._registry[name]
        spec = svc.container(self._ctx)
        spec = self.hooks.container(name, spec) or spec
        running = self.runtime.recreate(name, spec, labels=self.service_labels(name))
        self._ctx.running[name] = running
        self._probe_until_ready(svc, running, threading.Event())
        svc.seed(self._ctx, running)
        self.lease.record_changed(self, name)

    # ---- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """End this process's hold on the stack (idempotent): what is removed is the lease's
        decision (a plain stack: everything; a shared or reused one: nothing)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        for state in self._isolation_state.values():
            for value in state.values():
                with contextlib.suppress(Exception):
                    value.close()
        if self._faults is not None:
            self._faults.close()
        from .runtime.docker import reap_builders

        reap_builders()
        self.lease.release(self)
        self._build_due_snapshots()

    def _build_due_snapshots(self) -> None:
        """Start the detached builds of the snapshots this stack found missing (after the
        stack's own removal has begun: the engine is not shared with its containers' start)."""
        due, self._snapshots_due = self._snapshots_due, {}
        if not due or self.runtime.kind != "docker":
            return
        from .runtime.snapbuild import spawn_build

        for name, plan in due.items():
            with contextlib.suppress(Exception):
                spawn_build(self.settings, name, plan.key)

    # ---- sharing: what other processes need to attach -----------------------------------------

    def records(self) -> dict[str, dict[str, Any]]:
        """service -> where it runs, for every ready service (no secrets)."""
        return {
            name: {
                "image": r.image,
                "container_id": r.container_id,
                "host": r.host,
                "ports": {str(k): v for k, v in r.ports.items()},
                "internal_host": r.internal_host,
            }
            for name, r in self._ctx.running.items()
            if name in self._ctx.exposed
        }

    def adopt(self, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Add services that another process started (records as from :meth:`records`), in
        dependency order; returns the names added. Their secrets must be loaded first."""
        added = []
        now = time.monotonic()
        for name in registry_mod.start_order(records):
            if name in self._ctx.exposed:
                continue
            info = records[name]
            running = Running(
                service=name,
                image=str(info["image"]),
                container_id=str(info["container_id"]),
                host=str(info["host"]),
                ports={int(k): int(v) for k, v in info["ports"].items()},
                internal_host=str(info["internal_host"]),
                started_at=now,
            )
            self._ctx.services = self._ctx.services | {name}
            self._ctx.running[name] = running
            if running.container_id and not self.external:
                self.runtime.adopt(name, running.container_id)
            self._ctx.exposed[name] = self._control(
                name, self._registry[name].expose(self._ctx, running)
            )
            self._ready[name] = threading.Event()
            self._ready[name].set()
            added.append(name)
        return added

    def answers(self, name: str) -> bool:
        """Whether every published port of ``name`` accepts a connection now: a cheap check for
        attaching (its container was seen running; the full protocol probe ran when it
        started, and would import its client library here)."""
        import socket

        running = self._ctx.running[name]
        try:
            for port in running.ports.values():
                with socket.create_connection((running.host, port), timeout=1.0):
                    pass
        except OSError:
            return False
        return True

    def notify_grew(self, service: str, added: Iterable[str]) -> None:
        """Tell a running ``service`` (Vault, Prometheus, Grafana) about ``added`` services, as
        after an on-demand start (Vault writes their entries again)."""
        added = frozenset(added) & self._ctx.exposed.keys()
        if service in self._ctx.exposed and added:
            self._registry[service].on_stack_grew(self._ctx, self._ctx.running[service], added)

    def emit(self, event: StackEvent) -> None:
        """Report progress (leases use it for reuse, sweep and reaper notes)."""
        self._emit(event)


__all__ = ["Stack", "StackEvent"]
