"""Faults on demand: a service stopped, killed, paused, cut off or failed over, and healed after
the test that did it.

Every public service object (``aikernel_postgres``, ``aikernel_redis``, ...) inherits
:class:`Faultable`. Its calls go to the stack's :class:`FaultBook`, which applies them through the
runtime, remembers which services the current test touched and heals them after the test: the
container running, unpaused, on the stack network, the replica a replica again, the readiness
probe passing. Under pytest-xdist and reuse several processes share the stack: a test holds a
shared lock on each service it needs, a fault takes an exclusive one until the test is healed
(``FaultLocks``), and a fault a dead process left behind is healed by the next process that needs
the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ContainerExited, FaultError, FaultWaitTimeout, ServiceError

if TYPE_CHECKING:
    from .stack import Stack

#: what the plugin calls a test while no test runs (a session fixture, a hook)
OUTSIDE = "(outside a test)"

#: operations that need the engine (not possible in external mode)
ENGINE_OPS = (
    "stop",
    "start",
    "kill",
    "restart",
    "pause",
    "unpause",
    "disconnect",
    "reconnect",
    # a promoted PostgreSQL replica is made again by the engine
    "promote",
)


class Faultable:
    """Fault calls of a service's public object (a mixin of every ``aikernel_<service>`` object).

    Everything a test does here is undone after the test, before the next one starts (see
    docs/faults.md). Under pytest-xdist, ``stop``, ``kill``, ``pause``, ``disconnect`` and
    ``promote`` take the service for the rest of the test: tests of other workers that need it
    wait.
    """

    def _fault_book(self) -> tuple[FaultBook, str]:
        control = getattr(self, "_aikernel_control", None)
        if control is None:
            raise FaultError(
                f"{type(self).__name__}: this object is not attached to a running stack; use "
                "the one the aikernel_<service> fixture gives"
            )
        stack, service = control
        return stack.faults, service

    def _fault(self, op: str, **kwargs: Any) -> None:
        book, service = self._fault_book()
        book.apply(service, op, **kwargs)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the service's container (SIGTERM, SIGKILL after ``timeout`` s): connections are
        refused until :meth:`start`."""
        self._fault("stop", timeout=timeout)

    def start(self) -> None:
        """Start the stopped (or killed) container again: same host port, same in-network
        address, same data; returns when the readiness probe passes."""
        self._fault("start")

    def kill(self, signal: str = "SIGKILL") -> None:
        """Send ``signal`` to the container's main process (SIGKILL: a crash). The data
        directory keeps what the server had written (see docs/faults.md)."""
        self._fault("kill", signal=signal)

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`stop` then :meth:`start`; returns when the service is ready."""
        self._fault("restart", timeout=timeout)

    def pause(self) -> None:
        """Freeze every process of the container: connections hang instead of being refused."""
        self._fault("pause")

    def unpause(self) -> None:
        """Thaw a paused container."""
        self._fault("unpause")

    def disconnect(self) -> None:
        """Take the container off the stack network: peers (replicas, Kafka, Prometheus) and,
        on Docker, the published host port lose it; its data stays."""
        self._fault("disconnect")

    def reconnect(self) -> None:
        """Put the container back on the stack network under its alias and host port."""
        self._fault("reconnect")

    def promote(self) -> None:
        """Fail over to this replica (``aikernel_postgres_replica``, ``aikernel_redis_replica``):
        it becomes a writable primary. After the test it is a replica of the stack's primary
        again (made again where the server cannot go back). On a primary: FaultError."""
        self._fault("promote")

    @contextlib.contextmanager
    def down(self, timeout: float = 10.0) -> Iterator[None]:
        """``with service.down():`` stopped inside the block, started (and ready) after it."""
        self.stop(timeout=timeout)
        try:
            yield
        finally:
            self.start()

    @contextlib.contextmanager
    def killed(self, signal: str = "SIGKILL") -> Iterator[None]:
        """``with service.killed():`` crashed inside the block, started (and ready) after it."""
        self.kill(signal=signal)
        try:
            yield
        finally:
            self.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with service.paused():`` frozen inside the block, thawed after it."""
        self.pause()
        try:
            yield
        finally:
            self.unpause()

    @contextlib.contextmanager
    def partitioned(self) -> Iterator[None]:
        """``with service.partitioned():`` off the stack network inside the block."""
        self.disconnect()
        try:
            yield
        finally:
            self.reconnect()


# ---- cross-process locks ------------------------------------------------------------------------


class FaultLocks:
    """Per-service flock files of one shared stack, in ``folder``.

    ``<service>.lock``: shared by every test that needs the service, exclusive for a test that
    faulted it. ``<service>.holder``: who holds it exclusively. ``<service>.fault``: a fault not
    healed yet (a process that dies with it leaves it for the next one). ``<service>.broken``:
    healing failed; the message for the tests that need the service.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}
        #: service -> "sh" or "ex", what this process holds now
        self.held: dict[str, str] = {}

    def _fd(self, service: str) -> int:
        if service not in self._fds:
            self._fds[service] = os.open(self.folder / f"{service}.lock", os.O_RDWR | os.O_CREAT)
        return self._fds[service]

    def _take(self, service: str, kind: str, deadline: float) -> bool:
        import fcntl

        flag = fcntl.LOCK_SH if kind == "sh" else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(self._fd(service), flag | fcntl.LOCK_NB)
            except BlockingIOError:
                # a failed conversion may have dropped what was held
                self.held.pop(service, None)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
                continue
            self.held[service] = kind
            return True

    def _wanted_elsewhere(self, service: str) -> bool:
        """Whether a live process (not this one) waits to take ``service`` for a fault."""
        for path in self.folder.glob(f"{service}.want.*"):
            pid = path.name.rsplit(".", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            except PermissionError:
                pass
            return True
        return False

    def share(self, services: Iterable[str], wait: float, test: str) -> None:
        deadline = time.monotonic() + wait
        for service in sorted(services):
            if self.held.get(service) in ("sh", "ex"):
                continue
            # a fault that waits goes first: new tests do not keep it out for ever
            while self._wanted_elsewhere(service) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not self._take(service, "sh", deadline):
                raise FaultWaitTimeout(
                    f"{test}: waited {wait:g} s for {service}, which {self.holder(service)} "
                    "has taken down (a fault). Raise --aikernel-fault-wait (ini "
                    "aikernel_fault_wait, env AIKERNEL_FAULT_WAIT) or check that test."
                )

    def exclusive(self, service: str, wait: float, test: str) -> None:
        if self.held.get(service) == "ex":
            return
        want = self.folder / f"{service}.want.{os.getpid()}"
        want.write_text(test)
        try:
            taken = self._take(service, "ex", time.monotonic() + wait)
        finally:
            with contextlib.suppress(OSError):
                want.unlink()
        if not taken:
            raise FaultWaitTimeout(
                f"{test}: waited {wait:g} s to take {service} alone for a fault while tests in "
                "other processes used it (or faulted another service this test needs). Raise "
                "--aikernel-fault-wait (ini aikernel_fault_wait, env AIKERNEL_FAULT_WAIT)."
            )
        self._write(f"{service}.holder", {"test": test, "pid": os.getpid(), "at": time.time()})

    def downgrade(self, service: str) -> None:
        """Exclusive back to shared (after healing), keeping the service for the test."""
        import fcntl

        if self.held.get(service) == "ex":
            with contextlib.suppress(OSError):
                (self.folder / f"{service}.holder").unlink()
            fcntl.flock(self._fd(service), fcntl.LOCK_SH)
            self.held[service] = "sh"

    def release_all(self) -> None:
        import fcntl

        for service in list(self.held):
            if self.held[service] == "ex":
                with contextlib.suppress(OSError):
                    (self.folder / f"{service}.holder").unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd(service), fcntl.LOCK_UN)
            del self.held[service]

    def close(self) -> None:
        self.release_all()
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def holder(self, service: str) -> str:
        info = self._read(f"{service}.holder")
        if not info:
            return "a test in another process"
        return f"test {info.get('test')} (pid {info.get('pid')})"

    def mark(self, service: str, suffix: str, info: dict[str, Any] | None) -> None:
        """Write (or with None remove) ``<service>.<suffix>``."""
        if info is None:
            with contextlib.suppress(OSError):
                (self.folder / f"{service}.{suffix}").unlink()
        else:
            self._write(f"{service}.{suffix}", info)

    def marked(self, service: str, suffix: str) -> dict[str, Any] | None:
        return self._read(f"{service}.{suffix}")

    def _write(self, name: str, info: dict[str, Any]) -> None:
        path = self.folder / name
        tmp = path.with_name(f".{name}.{os.getpid()}")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            value = json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None


# ---- the book of one stack -----------------------------------------------------------------------


class FaultBook:
    """What tests of this process did to the stack's services, and how it is undone."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        #: the running test's node id (set by the plugin)
        self.test = OUTSIDE
        #: service -> the test that faulted it and has not been healed yet
        self.touched: dict[str, str] = {}
        #: service -> (why it could not be healed, the test that broke it)
        self.broken: dict[str, tuple[str, str]] = {}
        folder = stack.lease.fault_folder(stack)
        self.locks = FaultLocks(folder) if folder is not None else None

    # ---- test boundaries ----------------------------------------------------------------------

    def begin(self, test: str, services: Iterable[str]) -> None:
        """A test that needs ``services`` (with their dependencies) starts: wait while another
        process's test has one of them down, heal what a dead process left, fail for what
        could not be healed."""
        from . import services as registry_mod

        self.test = test
        needed = [n for n in registry_mod.closure(services) if n in self.stack]
        if self.locks is not None:
            self.locks.share(needed, self.stack.settings.fault_wait, test)
            for name in needed:
                left = self.locks.marked(name, "fault")
                if left is not None:  # a process died before it healed it
                    self.locks.exclusive(name, self.stack.settings.fault_wait, test)
                    self.touched.setdefault(name, str(left.get("test", "a dead process")))
                    self.heal_service(name)
                    self.locks.downgrade(name)
        for name in needed:
            why, culprit = self._broken(name)
            if why:
                # one more attempt: the cause may have passed
                if self.locks is not None:
                    self.locks.exclusive(name, self.stack.settings.fault_wait, test)
                self.touched.setdefault(name, culprit)
                try:
                    self.heal_service(name)
                except FaultError:
                    raise FaultError(self._broken(name)[0] or why) from None

    def use(self, service: str) -> None:
        """The running test asked for ``service`` itself (``request.getfixturevalue``): hold it
        (and its dependencies) like the services it named, under xdist and reuse."""
        from . import services as registry_mod

        if self.locks is None or self.test == OUTSIDE:
            return
        needed = [n for n in registry_mod.closure([service]) if n in self.stack]
        self.locks.share(needed, self.stack.settings.fault_wait, self.test)

    def _broken(self, name: str) -> tuple[str, str]:
        """(why ``name`` could not be healed, the test that broke it); ("", "") if healthy."""
        if name in self.broken:
            return self.broken[name]
        if self.locks is not None:
            info = self.locks.marked(name, "broken")
            if info is not None:
                return str(info.get("message", "")), str(info.get("test", OUTSIDE))
        return "", ""

    def heal(self) -> list[str]:
        """The test is over: heal every service it touched, in dependency order. Returns the
        heal failures (also recorded for the next tests that need those services)."""
        from . import services as registry_mod

        failures = []
        order = registry_mod.start_order(self.touched)
        # every touched container back first (running, unpaused, connected, a replica again),
        # then each settles with its dependents: a primary's replica may be faulted itself
        for name in order:
            try:
                self._restore(name)
            except Exception as exc:
                self._fail(name, exc)
                failures.append(self._broken(name)[0])
        for name in order:
            if name not in self.touched:
                continue
            try:
                self.heal_service(name)
            except FaultError as exc:
                failures.append(str(exc))
        return failures

    def end(self) -> None:
        """The test's teardown is over: other processes may take its services again."""
        if self.locks is not None:
            self.locks.release_all()
        self.test = OUTSIDE

    def close(self) -> None:
        if self.locks is not None:
            self.locks.close()

    # ---- applying ------------------------------------------------------------------------------

    def apply(self, service: str, op: str, **kwargs: Any) -> None:
        stack = self.stack
        call = f"aikernel_{service.replace('-', '_')}.{op}()"
        if service not in stack:
            raise FaultError(
                f"{call}: {service} is not in the stack (running: "
                f"{', '.join(stack.services) or 'none'})"
            )
        if stack.external and op in ENGINE_OPS:
            raise FaultError(
                f"{call}: needs the Docker engine, but in external mode (--aikernel-mode "
                f"external) the plugin did not start {service} and cannot stop, pause, cut off "
                "or fail it over. Use aikernel_faults (Toxiproxy) for network faults, or run in "
                "docker mode."
            )
        if stack.runtime.kind != "docker" and op in ENGINE_OPS:
            raise FaultError(
                f"{call}: needs the Docker runtime; on Kubernetes (--aikernel-runtime "
                "kubernetes) a pod cannot be stopped, paused or cut off and come back with the "
                "same address and data. Use aikernel_faults (Toxiproxy) for network faults, or "
                "run this test with --aikernel-runtime docker."
            )
        if op == "kill":
            signal = str(kwargs.get("signal", "SIGKILL"))
            if not signal or not (signal.upper().startswith("SIG") or signal.isdigit()):
                raise FaultError(f"{call}: signal {signal!r} is not a signal name (e.g. SIGKILL)")
        if op in ("stop", "restart") and float(kwargs.get("timeout", 10.0)) < 0:
            raise FaultError(f"{call}: timeout must be >= 0, got {kwargs.get('timeout')}")
        svc = stack._registry[service]
        if op == "promote" and not svc.can_promote:
            raise FaultError(
                f"{call}: {service} is not a replica; promote() is for "
                "postgres-replica and redis-replica"
            )
        if op not in ("start", "unpause", "reconnect"):
            self._take(service)
        runtime = stack.runtime
        try:
            if op == "stop":
                runtime.stop(service, timeout=float(kwargs.get("timeout", 10.0)))
            elif op == "kill":
                runtime.kill(service, signal=str(kwargs.get("signal", "SIGKILL")).upper())
            elif op == "start":
                self._start(service)
            elif op == "restart":
                runtime.stop(service, timeout=float(kwargs.get("timeout", 10.0)))
                self._start(service)
            elif op == "pause":
                runtime.pause(service)
            elif op == "unpause":
                runtime.unpause(service)
            elif op == "disconnect":
                runtime.disconnect(service)
            elif op == "reconnect":
                runtime.reconnect(service)
            elif op == "promote":
                svc.promote(stack._ctx, stack.running(service))
            else:  # pragma: no cover - the Faultable methods are the only callers
                raise FaultError(f"{call}: unknown fault")
        except ServiceError as exc:
            raise FaultError(f"{call}: {exc}") from None

    def _take(self, service: str) -> None:
        """This test faults ``service``: take it (exclusively, when processes share the stack)
        and note it for healing, also for a process that finds it after this one died."""
        if service in self.touched:
            return
        if self.locks is not None:
            self.locks.exclusive(service, self.stack.settings.fault_wait, self.test)
            self.locks.mark(service, "fault", {"test": self.test, "pid": os.getpid()})
        self.touched[service] = self.test

    def _start(self, service: str) -> None:
        stack = self.stack
        state = stack.runtime.state(service)
        if state.paused:
            stack.runtime.unpause(service)
        if not state.running:
            self._start_until_ready(service)

    def _start_until_ready(self, service: str) -> None:
        """Start the container and wait for its probe; a container that exits again while it
        starts is started again until the startup timeout (a killed Kafka broker exits while
        ZooKeeper still holds its old session's registration)."""
        stack = self.stack
        deadline = time.monotonic() + stack.settings.startup_timeout
        while True:
            stack.runtime.start_again(service)
            try:
                self._ready(service, restarted=True)
                return
            except ContainerExited:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _ready(self, service: str, *, restarted: bool) -> None:
        """Wait for the probe of ``service`` (a new start), then what a restart needs."""
        stack = self.stack
        svc = stack._registry[service]
        running = stack.running(service)
        state = stack.runtime.state(service)
        if dict(state.ports) != dict(running.ports):
            raise FaultError(
                f"{service}: came back on other host ports ({dict(state.ports)} instead of "
                f"{dict(running.ports)})"
            )
        stack.wait_ready_again(service)
        if restarted:
            svc.after_restart(stack._ctx, running)

    # ---- healing --------------------------------------------------------------------------------

    def heal_service(self, service: str) -> None:
        """Undo whatever was done to ``service``: running, unpaused, connected, not promoted,
        ready; its dependents settled. Raises FaultError (and records it) on failure."""
        stack = self.stack
        try:
            self._restore(service)
            for name in [service, *stack.dependents(service)]:
                stack.settle(name)
        except Exception as exc:
            self._fail(service, exc)
            raise FaultError(self._broken(service)[0]) from None
        self.broken.pop(service, None)
        if self.locks is not None:
            self.locks.mark(service, "broken", None)
            self.locks.mark(service, "fault", None)
            self.locks.downgrade(service)
        self.touched.pop(service, None)

    def _restore(self, service: str) -> None:
        """The container of ``service`` running, unpaused, connected, and a replica again."""
        stack = self.stack
        if not stack.external:
            self._heal_container(service)
        svc = stack._registry[service]
        if svc.can_promote and not svc.unpromote(stack._ctx, stack.running(service)):
            stack.rebuild(service)

    def _fail(self, service: str, exc: BaseException) -> None:
        """Record that ``service`` could not be healed, for this and every other process."""
        culprit = self.touched.get(service, OUTSIDE)
        message = (
            f"{service} is not healthy: {culprit} broke it and it could not be healed "
            f"({type(exc).__name__}: {str(exc).strip()})"
        )
        self.broken[service] = (message, culprit)
        if self.locks is not None:
            self.locks.mark(service, "broken", {"message": message, "test": culprit})
            self.locks.mark(service, "fault", None)
        self.touched.pop(service, None)

    def _heal_container(self, service: str) -> None:
        runtime = self.stack.runtime
        state = runtime.state(service)
        if state.paused:
            runtime.unpause(service)
        if not state.connected:
            runtime.reconnect(service)
        if not state.running:
            self._start_until_ready(service)


__all__ = ["FaultBook", "FaultLocks", "Faultable"]
