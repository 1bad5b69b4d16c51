"""Who holds a stack: one protocol for every way into it.

Every way a process gets a stack is a :class:`Lease` with three duties:

==========  ================================  ==============================  =====================
lease       grow(stack, names)                (first grow also)               release(stack)
==========  ================================  ==============================  =====================
plain       start what is missing             sweep dead sessions; register   remove everything
                                              the stack with Ryuk
xdist       under the run's lock: attach      sweep dead sessions             nothing: the xdist
            what other workers started,                                       controller removes
            start the rest, write the state                                   the stack at the end
reuse       under the project's lock, per     sweep dead sessions             drop this process's
            service: attach a container of                                    leases; the stack
            the same key, else replace a                                      stays for the next
            container no live lease holds,                                    run (``aikernel
            else start one; take a lease                                      down`` removes it)
external    connect and probe; seed once      nothing                         nothing
            (under the run's lock with xdist)
==========  ================================  ==============================  =====================

A lease on a reused service is a file in the project's folder that its holder keeps locked
(``flock``) until it ends: the kernel drops the lock when the process dies, however it dies, so
"is anyone using this?" is answered, never guessed. Nothing replaces or removes a reused service
that a live lease holds, except ``aikernel down --force``.

A reused service is keyed by what shapes it: its image, the settings and seed files that reach
it (``Service.shaped_by``), the plugin version and its dependencies' keys. Runs that need
different subsets attach to the same containers; a run that needs more grows the reused stack;
nothing is removed because a run needs fewer services.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import services as registry_mod
from .errors import AikernelError, DockerUnavailable, StackStartError
from .runtime import reaper
from .runtime.docker import (
    LABEL_SESSION,
    DockerRuntime,
    Owner,
    docker_client,
    remove_by_labels,
    remove_service,
)
from .services.base import SeedLedger
from .settings import Settings
from .shared import clear_state, locked, read_state, write_state
from .stack import Stack, StackEvent, StackHooks

LABEL_REUSE = "pytest-aikernel.reuse"
LABEL_PROJECT = "pytest-aikernel.project"
#: reused containers are owned by leases, never by a process: the sweeper never judges them
REUSE_OWNER = Owner(host="reuse", boot="", pidns="", pid=0, start="")


class StartFailed(AikernelError):
    """The stack could not be had; the message is what the user sees."""

    def __init__(self, message: str, *, elsewhere: bool = False) -> None:
        super().__init__(message)
        #: another process (an xdist worker) tried first and reported it in full
        self.elsewhere = elsewhere


@dataclass(frozen=True)
class XdistShare:
    """What the xdist controller hands to its workers."""

    folder: str
    session_id: str
    owner: str


# ---- the protocol -------------------------------------------------------------------------------


class Lease(ABC):
    """How a process holds a stack: :meth:`open` makes it, :meth:`grow` adds services (any
    process of the same stack, under the same lock), :meth:`release` ends this process's hold."""

    kind: str = ""

    def __init__(self) -> None:
        self._first = True

    def open(
        self,
        settings: Settings,
        *,
        report: Callable[[StackEvent], None] | None = None,
        hooks: StackHooks | None = None,
    ) -> Stack:
        """A new, empty stack held by this lease."""
        return Stack(settings, on_event=report, hooks=hooks, lease=self, **self._stack_kwargs())

    def _stack_kwargs(self) -> dict[str, Any]:
        """What this lease's stacks are made with besides the settings (session, owner...)."""
        return {}

    def adopt_runtime(self, stack: Stack) -> None:  # noqa: B027 - optional hook
        """Set up ``stack``'s runtime for this lease (called as the stack is made)."""

    @abstractmethod
    def grow(self, stack: Stack, names: Iterable[str]) -> None:
        """Make ``names`` and their dependencies part of ``stack``; raise StartFailed."""

    @abstractmethod
    def release(self, stack: Stack) -> None:
        """End this process's hold on ``stack``."""

    def fault_folder(self, stack: Stack) -> Path | None:
        """Where the fault locks of a stack that several processes share live (None: only
        this process uses the stack)."""
        return None

    def record_changed(self, stack: Stack, name: str) -> None:  # noqa: B027 - optional hook
        """``name``'s container was made again (a rebuilt replica): tell the other processes."""

    def _sweep_once(self, stack: Stack) -> None:
        """The first grow of a process removes what dead sessions left behind."""
        if not self._first:
            return
        self._first = False
        swept = stack.runtime.sweep_dead()
        if swept:
            stack.emit(StackEvent("swept", detail=", ".join(swept)))


def _start(stack: Stack, names: Iterable[str]) -> None:
    """``stack.start_here`` with its errors as StartFailed (the message the user sees)."""
    try:
        stack.start_here(names)
    except DockerUnavailable as exc:
        raise StartFailed(f"pytest-aikernel: {exc}") from None
    except StackStartError as exc:
        raise StartFailed(str(exc)) from None


def _register_ryuk(stack: Stack) -> None:
    """Give Ryuk the stack's session label; a note when Ryuk is on but could not take it."""
    why = reaper.register({LABEL_SESSION: stack.session_id})
    if why and not reaper.disabled_reason():
        stack.emit(StackEvent("note", detail=reaper.status()))


class PlainLease(Lease):
    """This process starts the stack and removes it; Ryuk removes it if the process is killed."""

    kind = "plain"

    def adopt_runtime(self, stack: Stack) -> None:
        """Only this process starts containers in a plain stack: its network can wait until a
        service needs it (no other process looks for it by name)."""
        if isinstance(stack.runtime, DockerRuntime):
            stack.runtime.network_on_demand = True

    def grow(self, stack: Stack, names: Iterable[str]) -> None:
        names = list(names)
        if stack.external:
            _start(stack, names)
            return
        if self._first:
            try:
                self._sweep_once(stack)
            except DockerUnavailable as exc:
                raise StartFailed(f"pytest-aikernel: {exc}") from None
            if stack.runtime.kind == "docker":  # on Kubernetes the forwarder watches the owner
                # Ryuk's container starts beside the stack's (it takes as long as a service:
                # 0.3-0.8 s here), and the start returns only once Ryuk holds the filter, so
                # no test runs unguarded. A run killed in that first second leaves containers
                # whose owner is dead: the next session's sweep and `aikernel down` remove them
                registering = threading.Thread(
                    target=_register_ryuk, args=(stack,), name="aikernel-ryuk", daemon=True
                )
                registering.start()
                try:
                    _start(stack, names)
                finally:
                    registering.join()
                return
        _start(stack, names)

    def release(self, stack: Stack) -> None:
        if stack.external:
            return
        if isinstance(stack.runtime, DockerRuntime) and stack.process_ends:
            # at the session's end, when Ryuk holds the session, the process exits without
            # waiting for the engine to remove the stack (0.3-0.6 s here): a detached process
            # removes it at once, and Ryuk does if that one fails. Without Ryuk, or for a stack
            # stopped while its process goes on, removed before stop() returns
            held = reaper.holds({LABEL_SESSION: stack.session_id})
            stack.runtime.close(in_background=held)
            return
        stack.runtime.close()


class ExternalLease(Lease):
    """The services run already: connect and probe; seed once (under the xdist run's lock)."""

    kind = "external"

    def __init__(self, folder: Path | None = None) -> None:
        super().__init__()
        self.folder = folder

    def grow(self, stack: Stack, names: Iterable[str]) -> None:
        names = list(names)
        if not stack.settings.seed_external:
            _start(stack, names)
            return
        with contextlib.ExitStack() as held:
            if self.folder is not None:  # the workers of this run
                held.enter_context(locked(self.folder))
            # every runner on every machine: a lock in the stack itself
            ledger = _seed_ledger(stack, names, held)
            keys = service_keys(stack.settings, registry_mod.closure(names))
            if ledger is not None:
                done = ledger.seeded()
                seeded = {n for n, key in done.items() if keys.get(n) == key}
            elif self.folder is not None:
                seeded = set((read_state(self.folder) or {}).get("seeded", []))
            else:
                seeded = set()
            stack.seeded_elsewhere = frozenset(seeded)
            _start(stack, names)
            fresh = {n: keys[n] for n in stack.services if n in keys and n not in seeded}
            if ledger is not None:
                ledger.mark(fresh)
            if self.folder is not None:
                state = read_state(self.folder) or {}
                state["seeded"] = sorted(seeded | set(fresh) | set(state.get("seeded", [])))
                write_state(self.folder, state)

    def release(self, stack: Stack) -> None:
        stack.runtime.detach()


def _seed_ledger(
    stack: Stack, names: Iterable[str], held: contextlib.ExitStack
) -> SeedLedger | None:
    """The seed lock of an external stack, held in its first service that can hold one
    (PostgreSQL: an advisory lock; Redis: a key), taken on ``held``; None when none can."""
    reg = registry_mod.registry()
    for name in registry_mod.start_order(registry_mod.closure(names)):
        target = None
        try:
            target = reg[name].external(os.environ)
        except AikernelError:
            continue
        lock = reg[name].seed_ledger(target)
        if lock is None:
            continue
        try:
            return held.enter_context(lock)
        except AikernelError as exc:
            raise StartFailed(f"pytest-aikernel: {exc}") from None
    return None


class XdistLease(Lease):
    """One stack for every worker of a run: its state file and lock are in the run's folder."""

    kind = "xdist"

    def __init__(self, share: XdistShare) -> None:
        super().__init__()
        self.share = share
        self.folder = Path(share.folder)

    def _stack_kwargs(self) -> dict[str, Any]:
        return {"session_id": self.share.session_id, "owner": Owner.parse(self.share.owner)}

    def grow(self, stack: Stack, names: Iterable[str]) -> None:
        names = list(names)
        with locked(self.folder):
            state = read_state(self.folder)
            if state is not None and state.get("failed"):
                raise StartFailed(str(state["failed"]), elsewhere=True)
            if state is not None:
                stack.secrets.load(state["secrets"])
                stack.adopt(state["services"])
            if not stack.missing(names):
                return
            try:
                self._sweep_once(stack)
                self._remove_orphans(stack)
            except DockerUnavailable as exc:
                raise StartFailed(f"pytest-aikernel: {exc}") from None
            try:
                _start(stack, names)
            except StartFailed as exc:
                if state is None:  # the first start failed: every worker gets the same error
                    write_state(self.folder, {"failed": str(exc)})
                    raise
                self._write(stack, state)  # what did start is recorded for the others
                raise
            self._write(stack, state)

    def _remove_orphans(self, stack: Stack) -> None:
        """Containers of this run that the state does not know were left by a worker that died
        while starting them (it held the lock, which the kernel released): remove them, or their
        names would block the start."""
        stack.runtime.remove_orphans(r["container_id"] for r in stack.records().values())

    def _write(self, stack: Stack, state: Mapping[str, Any] | None) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        started = dict((state or {}).get("started", {}))
        for name, seconds in stack.timings.items():
            started.setdefault(name, [worker, round(seconds, 3)])
        write_state(
            self.folder,
            {
                "session_id": stack.session_id,
                "secrets": stack.secrets.export(),
                "services": stack.records(),
                # service -> [the worker that started it, seconds to ready]: the controller
                # shows them once, at the end of the run
                "started": started,
            },
        )

    def fault_folder(self, stack: Stack) -> Path | None:
        return self.folder / "faults"

    def record_changed(self, stack: Stack, name: str) -> None:
        with locked(self.folder):
            state = read_state(self.folder)
            if state is not None and "services" in state:
                services = dict(state["services"])
                services[name] = stack.records()[name]
                write_state(self.folder, {**state, "services": services})

    def release(self, stack: Stack) -> None:
        stack.runtime.detach()  # the controller removes the stack once every worker is done


def remove_xdist_stack(share: XdistShare, settings: Settings | None = None) -> int:
    """The controller's teardown: remove every container of the run's shared stack."""
    from .shared import LOCK

    folder = Path(share.folder)
    if not (folder / LOCK).exists():  # no worker went for the stack
        return 0
    if settings is not None and settings.runtime == "kubernetes":
        from .runtime.kubernetes import remove_session

        return remove_session(settings.kube_context, share.session_id)
    try:
        client = docker_client(timeout=30)
    except DockerUnavailable:
        return 0
    try:
        return remove_by_labels(client, {LABEL_SESSION: share.session_id})
    finally:
        client.close()


# ---- reuse --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-aikernel"


def install_id() -> str:
    """A random id made once per cache folder: two machines, or two CI runner containers with
    the same checkout path and host name, never share one (their cache folders differ)."""
    path = cache_dir() / "install-id"
    try:
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".install-id.{os.getpid()}")
    tmp.write_text(uuid.uuid4().hex, encoding="ascii")
    with contextlib.suppress(OSError):
        os.link(tmp, path)  # the first writer wins; everybody reads its id
    tmp.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()


def project_id(rootdir: Path, settings: Settings | None = None) -> str:
    """The reused stack's identity: this cache folder's install id, the project's rootdir and,
    on Kubernetes, the runtime and its context (a stack on a cluster is another stack)."""
    text = f"{install_id()}\0{rootdir.resolve()}"
    if settings is not None and settings.runtime == "kubernetes":
        text += f"\0kubernetes\0{settings.kube_context or ''}\0{settings.kube_namespace_prefix}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _fingerprint(value: Any) -> Any:
    """A JSON-able form of a settings value, with files replaced by their content's hash."""
    if isinstance(value, Path):
        try:
            return "sha256:" + hashlib.sha256(value.read_bytes()).hexdigest()
        except OSError:
            return f"missing:{value}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _fingerprint(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    return value


def service_keys(settings: Settings, names: Iterable[str]) -> dict[str, str]:
    """service -> its reuse key, for ``names`` and their dependencies."""
    from . import __version__

    registry = registry_mod.registry()
    keys: dict[str, str] = {}
    for name in registry_mod.start_order(registry_mod.closure(names)):
        svc = registry[name]
        blob = {
            "service": name,
            "image": registry_mod.image_for(name, settings),
            "plugin": __version__,
            "settings": {f: _fingerprint(getattr(settings, f)) for f in sorted(svc.shaped_by)},
            "depends": {d: keys[d] for d in sorted(svc.depends_on)},
        }
        if settings.bind_address is not None:  # where its ports are published
            blob["bind"] = settings.bind_address
        if settings.runtime == "kubernetes" and settings.kube_access != "forward":
            # how the test process reaches it: a service started with the other access is
            # replaced, not reached the way it was not started for
            blob["access"] = [settings.kube_access, settings.kube_node_address or "auto"]
        text = json.dumps(blob, sort_keys=True, default=str)
        keys[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return keys


def _answers(record: Mapping[str, Any]) -> bool:
    """Whether every published port of a recorded service accepts a connection: a cheap check
    for attaching (its readiness probe ran when it started, and would import its client)."""
    import socket

    try:
        for port in record["ports"].values():
            with socket.create_connection((str(record["host"]), int(port)), timeout=1.0):
                pass
    except (OSError, KeyError, ValueError):
        return False
    return True


def _dependents(name: str, among: Iterable[str]) -> set[str]:
    """Services of ``among`` that depend on ``name``, directly or not."""
    registry = registry_mod.registry()
    out = {name}
    changed = True
    while changed:
        changed = False
        for other in among:
            if other not in out and set(registry[other].depends_on) & out:
                out.add(other)
                changed = True
    return out - {name}


class Leases:
    """The lease files of one reused project: ``leases/<service>/<holder>.lock``, each held
    locked by a live process that uses that service."""

    def __init__(self, folder: Path) -> None:
        self.root = folder / "leases"
        # one file per holder: this process's owner label, and a suffix per Leases object (two
        # reuse sessions in one process, pytester's in-process runs, must not share a file)
        self.me = f"{Owner.current().label().replace(':', '_')}~{uuid.uuid4().hex[:6]}"
        self._held: dict[str, IO[bytes]] = {}

    def take(self, service: str) -> None:
        import fcntl

        if service in self._held:
            return
        path = self.root / service / f"{self.me}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")  # noqa: SIM115 - held open until release
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        self._held[service] = fh

    def holders(self, service: str) -> list[str]:
        """Live holders of ``service`` other than this process (stale files are removed)."""
        import fcntl

        folder = self.root / service
        live = []
        for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
            if path.stem == self.me and service in self._held:
                continue
            try:
                with open(path, "a+b") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        owner = Owner.parse(path.stem.split("~")[0].replace("_", ":"))
                        live.append(owner.describe() if owner else path.stem)
                        continue
                    path.unlink(missing_ok=True)  # its holder is gone
            except OSError:
                continue
        return live

    def release(self) -> None:
        for service, fh in self._held.items():
            with contextlib.suppress(OSError):
                (self.root / service / f"{self.me}.lock").unlink()
            with contextlib.suppress(OSError):
                fh.close()
        self._held.clear()


class Held(StartFailed):
    """A reused service must be replaced, but a live process holds it."""


class ReuseLease(Lease):
    """A stack kept after the session, per service: found again by key, shared by every run of
    the project (any subset), grown on demand, replaced only where no live lease holds it."""

    kind = "reuse"

    def __init__(self, rootdir: Path, settings: Settings | None = None) -> None:
        super().__init__()
        self.project = project_id(rootdir, settings)
        self.folder = cache_dir() / "reuse" / self.project
        self.session_id = f"r{self.project}"
        self.leases = Leases(self.folder)
        self._keys: dict[str, str] = {}

    def _stack_kwargs(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "owner": REUSE_OWNER,
            "extra_labels": {LABEL_PROJECT: self.project},
        }

    def open(
        self,
        settings: Settings,
        *,
        report: Callable[[StackEvent], None] | None = None,
        hooks: StackHooks | None = None,
    ) -> Stack:
        stack = super().open(settings, report=report, hooks=hooks)
        stack.service_labels = lambda name: {LABEL_REUSE: self._keys.get(name, "")}
        return stack

    def grow(self, stack: Stack, names: Iterable[str]) -> None:
        names = list(names)
        keys = service_keys(stack.settings, names)
        self._keys.update(keys)
        with locked(self.folder):
            state = read_state(self.folder) or {}
            records: dict[str, dict[str, Any]] = dict(state.get("services", {}))
            if records:
                stack.secrets.load(state.get("secrets", {}))
            try:
                self._sweep_once(stack)
            except DockerUnavailable as exc:
                raise StartFailed(f"pytest-aikernel: {exc}") from None
            attach: dict[str, dict[str, Any]] = {}
            replace: dict[str, str] = {}
            for name in registry_mod.start_order(keys):
                if name in stack.services:
                    continue
                record = records.get(name)
                if record is None:
                    continue
                if record.get("key") != keys[name]:
                    replace[name] = "its settings changed"
                elif any(d in replace for d in registry_mod.registry()[name].depends_on):
                    replace[name] = "a service it depends on is replaced"
                elif not stack.runtime.is_running(
                    str(record["container_id"])
                ) and not self._started_again(stack, name, record):
                    replace[name] = "its container no longer runs"
                elif not _answers(record):
                    replace[name] = "it no longer answers"
                else:
                    attach[name] = record
            # decided before anything is adopted: a replaced service takes its dependents along
            for name, why in replace.items():
                self._remove(stack, records, name, why)
            attach = {n: r for n, r in attach.items() if n in records}
            stack.adopt(attach)
            self._remove_orphans(stack, records, names)
            if attach:
                stack.emit(
                    StackEvent(
                        "reused",
                        detail=f"{', '.join(attach)} (session {self.session_id})",
                    )
                )
            try:
                _start(stack, names)
                if "vault" in attach:
                    # services replaced by runs without Vault have new addresses: describe
                    # every service of this stack again (a few writes)
                    stack.notify_grew("vault", set(stack.services) - {"vault"})
            finally:
                records.update({n: {**r, "key": self._keys[n]} for n, r in stack.records().items()})
                write_state(
                    self.folder,
                    {
                        "project": self.project,
                        "secrets": stack.secrets.export(),
                        "services": records,
                        "runtime": stack.runtime.describe(),
                    },
                )
                # every service this process uses is held, also after a failed grow
                for name in registry_mod.closure(names) & set(stack.services):
                    self.leases.take(name)

    def _started_again(self, stack: Stack, name: str, record: Mapping[str, Any]) -> bool:
        """A container that a fault stopped (its process died before healing it, and left the
        marker) is started again, keeping its data; the next test's fault book heals the rest
        (readiness, Vault's entries). Anything else that stopped is replaced."""
        import time

        fault_folder = self.fault_folder(stack)
        if fault_folder is None or not (fault_folder / f"{name}.fault").exists():
            return False
        if not stack.runtime.start_container(str(record["container_id"])):
            return False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _answers(record):
                stack.emit(StackEvent("note", detail=f"{name}: started again after a fault"))
                return True
            time.sleep(0.1)
        return False

    def _remove(
        self, stack: Stack, records: dict[str, dict[str, Any]], name: str, why: str
    ) -> None:
        """Remove the reused ``name`` and what depends on it, unless a live lease holds any."""
        doomed = {name, *_dependents(name, records)}
        for service in sorted(doomed):
            holders = self.leases.holders(service)
            if holders and service in records:
                raise Held(
                    f"the reused {service} must be replaced ({why}), but it is in use by "
                    f"{', '.join(holders)}"
                )
        for service in sorted(doomed):
            record = records.pop(service, None)
            if record is None:
                continue
            stack.runtime.remove_service(service, str(record["container_id"]))
        stack.emit(StackEvent("replaced", detail=f"{', '.join(sorted(doomed))}: {why}"))

    def _remove_orphans(
        self, stack: Stack, records: dict[str, dict[str, Any]], names: list[str]
    ) -> None:
        """A container of this project that the state does not know (its state file was lost)
        would block the name of a service to start: remove it, unless someone holds it."""
        for name in stack.missing(names):
            if name in records or not stack.runtime.find(name):
                continue
            holders = self.leases.holders(name)
            if holders:
                raise Held(
                    f"the reused {name} has no state in this cache folder, but it is in use by "
                    f"{', '.join(holders)}"
                )
            with contextlib.suppress(Exception):
                stack.runtime.remove_service(name, "")
            stack.emit(StackEvent("replaced", detail=f"{name}: its state was lost"))

    def fault_folder(self, stack: Stack) -> Path | None:
        return self.folder / "faults"

    def record_changed(self, stack: Stack, name: str) -> None:
        with locked(self.folder):
            state = read_state(self.folder) or {}
            services = dict(state.get("services", {}))
            services[name] = {**stack.records()[name], "key": self._keys.get(name, "")}
            write_state(self.folder, {**state, "services": services})

    def release(self, stack: Stack) -> None:
        self.leases.release()
        stack.runtime.detach()


def reuse_status(folder: Path) -> dict[str, list[str]]:
    """service -> live holders, for a reused project's folder (for ``aikernel down``)."""
    state = read_state(folder) or {}
    leases = Leases(folder)
    return {name: leases.holders(name) for name in state.get("services", {})}


def remove_reused(folder: Path, *, force: bool) -> tuple[list[str], dict[str, list[str]]]:
    """Remove a reused project's services that no live lease holds (all with ``force``).
    Returns (removed services, held service -> holders)."""
    removed: list[str] = []
    held: dict[str, list[str]] = {}
    with locked(folder):
        state = read_state(folder) or {}
        records: dict[str, Any] = dict(state.get("services", {}))
        leases = Leases(folder)
        for name in list(records):
            holders = leases.holders(name)
            if holders and not force:
                held[name] = holders
        # a held service keeps what it depends on
        keep = registry_mod.closure(held)
        doomed = [n for n in records if n not in keep]
        runtime = state.get("runtime") or {}
        if doomed and runtime.get("kind") == "kubernetes":
            from .runtime.kubernetes import KubernetesRuntime

            kube = KubernetesRuntime(
                f"r{state.get('project', '')}",
                context=runtime.get("context"),
                prefix=str(runtime.get("prefix", "aikernel")),
                reused=True,
            )
            if set(doomed) == set(records):
                kube.close()  # the namespace, with everything in it
            else:
                kube.remove(doomed)
            for name in doomed:
                records.pop(name)
                removed.append(name)
        elif doomed:
            client = docker_client()
            try:
                for name in doomed:
                    session = f"r{state.get('project', '')}"
                    remove_service(client, session, name, str(records[name]["container_id"]))
                    records.pop(name)
                    removed.append(name)
                if not records:
                    remove_by_labels(client, {LABEL_PROJECT: str(state.get("project", ""))})
            finally:
                client.close()
        if records:
            write_state(folder, {**state, "services": records})
        else:
            clear_state(folder)
    return removed, held


# ---- choosing the lease -------------------------------------------------------------------------


def choose(settings: Settings, *, xdist: XdistShare | None, rootdir: Path) -> Lease:
    """The lease this process takes, from the settings and the xdist share."""
    if settings.mode == "external":
        return ExternalLease(Path(xdist.folder) if xdist is not None else None)
    if settings.reuse:
        return ReuseLease(rootdir, settings)
    if xdist is not None:
        return XdistLease(xdist)
    return PlainLease()


def open_stack(
    settings: Settings,
    wanted: frozenset[str],
    *,
    report: Callable[[StackEvent], None],
    xdist: XdistShare | None,
    rootdir: Path,
    hooks: StackHooks | None = None,
    fallback: bool = True,
) -> Stack:
    """This process's stack with ``wanted`` in it; StartFailed with the message. A reused
    service that must be replaced but is held makes the run start a stack of its own, unless
    ``fallback`` is false (``aikernel up``, whose stack must outlive it)."""
    lease = choose(settings, xdist=xdist, rootdir=rootdir)
    stack = lease.open(settings, report=report, hooks=hooks)
    try:
        if wanted:
            stack.start(wanted)
    except Held as exc:
        stack.stop()
        if not fallback:
            raise
        report(StackEvent("note", detail=f"{exc}; this run starts a stack of its own"))
        own: Lease = XdistLease(xdist) if xdist is not None else PlainLease()
        stack = own.open(settings, report=report, hooks=hooks)
        try:
            stack.start(wanted)
        except BaseException:
            stack.stop()
            raise
    except BaseException:
        stack.stop()
        raise
    return stack


__all__ = [
    "ExternalLease",
    "Lease",
    "PlainLease",
    "ReuseLease",
    "StartFailed",
    "XdistLease",
    "XdistShare",
    "open_stack",
    "remove_xdist_stack",
    "service_keys",
]
