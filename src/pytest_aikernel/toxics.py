"""Network faults through Toxiproxy: ``aikernel_faults`` (one :class:`NetworkFaults` per test).

``proxied(service)`` makes, for this test only, a Toxiproxy proxy in front of each published
port of the service and returns the service's usual public object pointing at the proxies: the
host side (``127.0.0.1:<port>``) and the in-network address (``toxiproxy:<port>``). Toxics added
to those proxies degrade only that path; the service's own addresses stay direct. Everything is
removed when the test ends (the proxies are deleted, which closes their connections).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _http
from .errors import FaultError

if TYPE_CHECKING:
    from .services.toxiproxy import ToxiproxyService
    from .stack import Stack

DIRECTIONS = ("both", "upstream", "downstream")

#: toxic type -> its attributes (Toxiproxy 2's names); documented in docs/faults.md
KINDS: Mapping[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}


class Toxic:
    """A fault on a proxied path, in place from the call. ``remove()`` ends it; as a context
    manager it ends with the block; otherwise it ends with the test."""

    def __init__(self, faults: NetworkFaults, service: str, what: str, undo: list[Any]) -> None:
        self._faults = faults
        self.service = service
        #: e.g. "latency(300 ms, downstream)"
        self.what = what
        self._undo = undo

    def remove(self) -> None:
        """Take the fault away now (idempotent)."""
        undo, self._undo = self._undo, []
        for step in reversed(undo):
            step()

    def __enter__(self) -> Toxic:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<Toxic {self.what} on {self.service}>"


class NetworkFaults:
    """This test's network faults (the ``aikernel_faults`` fixture).

    ``proxied("postgres")`` is ``aikernel_postgres`` through Toxiproxy (dsn/connect, url,
    client, internal addresses...). Faults on that path: :meth:`latency`, :meth:`bandwidth`,
    :meth:`timeout`, :meth:`reset_peer`, :meth:`slow_close`, :meth:`limit_data`, :meth:`down`
    and the generic :meth:`toxic`; each for ``direction`` "upstream" (to the server),
    "downstream" (to the client) or "both", as a context manager or until the test ends.
    """

    def __init__(self, stack: Stack, name: str, test: str) -> None:
        self._stack = stack
        #: the test's name (``aik_<worker>_<n>_<hex>``): proxies are named after it
        self.scope_name = name
        self._test = test
        #: service -> container port -> (proxy name, pool port)
        self._proxies: dict[str, dict[int, tuple[str, int]]] = {}
        self._objects: dict[str, Any] = {}
        self._count = itertools.count(1)

    # ---- proxies ------------------------------------------------------------------------------

    @property
    def toxiproxy(self) -> ToxiproxyService:
        obj: ToxiproxyService = self._stack["toxiproxy"]
        return obj

    def proxied(self, service: str) -> Any:
        """The public object of ``service`` with every address through this test's proxies."""
        if service not in self._objects:
            self._check_service(service, "proxied")
            svc = self._stack._registry[service]
            routes = self._make_proxies(service)
            self._objects[service] = svc.proxied(self._stack[service], routes)
        return self._objects[service]

    def _check_service(self, service: str, call: str) -> None:
        where = f"aikernel_faults.{call}({service!r})"
        if service == "toxiproxy":
            raise FaultError(f"{where}: Toxiproxy cannot proxy itself")
        if service not in self._stack._registry:
            raise FaultError(
                f"{where}: no such service; known services: {', '.join(self._stack._registry)}"
            )
        reason = self._stack._registry[service].not_proxied
        if reason:
            raise FaultError(f"{where}: a proxy cannot stand in front of {service}: {reason}")
        if service not in self._stack:
            # started on demand, as a fixture of it would be (the selected tests did not say
            # they need it: request aikernel_<service> to have it from the start)
            from .errors import AikernelError

            try:
                self._stack.start([service])
            except AikernelError as exc:
                raise FaultError(f"{where}: {service} could not be started: {exc}") from None

    def _make_proxies(self, service: str) -> dict[int, Any]:
        from .services.base import Route

        toxi = self.toxiproxy
        running = self._stack.running(service)
        pool = [port for port, _host in toxi.pool]
        # start where this worker's proxies are likely to find free ports
        offset = (self._stack.test_scope("toxiproxy", self.scope_name).worker_index * 4) % max(
            len(pool), 1
        )
        order = pool[offset:] + pool[:offset]
        made: dict[int, tuple[str, int]] = {}
        routes: dict[int, Route] = {}
        for container_port in running.ports:
            name = f"{self.scope_name}_{service}_{container_port}"
            upstream = f"{running.internal_host}:{container_port}"
            errors = []
            for pool_port in order:
                if any(pool_port == used for _n, used in made.values()):
                    continue
                response = toxi.api(
                    "POST",
                    "/proxies",
                    {"name": name, "listen": f"0.0.0.0:{pool_port}", "upstream": upstream},
                )
                if response.ok:
                    made[container_port] = (name, pool_port)
                    break
                errors.append(f"{pool_port}: {_http.reason(response)}")
            else:
                self._proxies.setdefault(service, {}).update(made)
                raise FaultError(
                    f"aikernel_faults.proxied({service!r}): no free proxy port in Toxiproxy's pool "
                    f"of {len(pool)} ({'; '.join(errors[-3:])}). Each test's proxies are removed "
                    "when it ends; a test that proxies many services at once may need fewer."
                )
            routes[container_port] = Route(
                host=toxi.host,
                port=toxi.host_port(pool_port),
                internal_host=toxi.internal_host,
                internal_port=pool_port,
            )
        self._proxies[service] = made
        return routes

    def _names(self, service: str, call: str) -> list[str]:
        self._check_service(service, call)
        self.proxied(service)
        return [name for name, _port in self._proxies[service].values()]

    # ---- toxics -------------------------------------------------------------------------------

    def toxic(
        self,
        service: str,
        kind: str,
        *,
        direction: str = "both",
        toxicity: float = 1.0,
        **attributes: int,
    ) -> Toxic:
        """Add a Toxiproxy toxic of type ``kind`` (``latency``, ``bandwidth``, ``slow_close``,
        ``timeout``, ``reset_peer``, ``slicer``, ``limit_data``) with Toxiproxy's attribute
        names, e.g. ``toxic("redis", "latency", latency=100, jitter=10)``."""
        call = f"aikernel_faults.toxic({service!r}, {kind!r})"
        if kind not in KINDS:
            raise FaultError(f"{call}: unknown toxic; known toxics: {', '.join(KINDS)}")
        if direction not in DIRECTIONS:
            raise FaultError(
                f"{call}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}"
            )
        if not 0.0 <= float(toxicity) <= 1.0:
            raise FaultError(f"{call}: toxicity must be between 0 and 1, got {toxicity!r}")
        unknown = sorted(set(attributes) - set(KINDS[kind]))
        if unknown:
            raise FaultError(
                f"{call}: unknown attribute {', '.join(unknown)}; {kind} takes "
                f"{', '.join(KINDS[kind])}"
            )
        for key, value in attributes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FaultError(
                    f"{call}: {key} must be a whole number >= 0 (milliseconds, bytes or KB/s), "
                    f"got {value!r}"
                )
        names = self._names(service, kind)
        streams = ("upstream", "downstream") if direction == "both" else (direction,)
        toxi = self.toxiproxy
        undo: list[Any] = []
        try:
            for proxy in names:
                for stream in streams:
                    toxic_name = f"{kind}_{stream}_{next(self._count)}"
                    response = toxi.api(
                        "POST",
                        f"/proxies/{proxy}/toxics",
                        {
                            "name": toxic_name,
                            "type": kind,
                            "stream": stream,
                            "toxicity": float(toxicity),
                            "attributes": dict(attributes),
                        },
                    )
                    if not response.ok:
                        raise FaultError(
                            f"{call}: Toxiproxy refused it (HTTP {response.status}: "
                            f"{_http.reason(response)})"
                        )
                    undo.append(self._remover(proxy, toxic_name))
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise
        shown = ", ".join(f"{k}={v}" for k, v in attributes.items())
        return Toxic(self, service, f"{kind}({shown}, {direction})", undo)

    def _remover(self, proxy: str, toxic_name: str) -> Any:
        def remove() -> None:
            response = self.toxiproxy.api("DELETE", f"/proxies/{proxy}/toxics/{toxic_name}")
            if not response.ok and response.status != 404:
                raise FaultError(
                    f"removing toxic {toxic_name} of proxy {proxy} failed: HTTP "
                    f"{response.status}: {_http.reason(response)}"
                )

        return remove

    def latency(self, service: str, ms: int, jitter: int = 0, *, direction: str = "both") -> Toxic:
        """Delay data by ``ms`` (+/- ``jitter``) milliseconds."""
        self._non_negative(service, "latency", ms=ms, jitter=jitter)
        return self.toxic(service, "latency", direction=direction, latency=ms, jitter=jitter)

    def bandwidth(self, service: str, kbps: int, *, direction: str = "both") -> Toxic:
        """Limit the rate to ``kbps`` kilobytes per second (Toxiproxy's unit)."""
        self._non_negative(service, "bandwidth", kbps=kbps)
        return self.toxic(service, "bandwidth", direction=direction, rate=kbps)

    def timeout(self, service: str, ms: int = 0, *, direction: str = "both") -> Toxic:
        """Stop all data; close the connection after ``ms`` (0: keep it open, silent)."""
        self._non_negative(service, "timeout", ms=ms)
        return self.toxic(service, "timeout", direction=direction, timeout=ms)

    def reset_peer(self, service: str, ms: int = 0, *, direction: str = "both") -> Toxic:
        """Reset connections (TCP RST) after ``ms`` milliseconds."""
        self._non_negative(service, "reset_peer", ms=ms)
        return self.toxic(service, "reset_peer", direction=direction, timeout=ms)

    def slow_close(self, service: str, ms: int, *, direction: str = "both") -> Toxic:
        """Delay the close of connections by ``ms`` milliseconds."""
        self._non_negative(service, "slow_close", ms=ms)
        return self.toxic(service, "slow_close", direction=direction, delay=ms)

    def limit_data(self, service: str, nbytes: int, *, direction: str = "both") -> Toxic:
        """Close connections once ``nbytes`` bytes have passed."""
        self._non_negative(service, "limit_data", nbytes=nbytes)
        return self.toxic(service, "limit_data", direction=direction, bytes=nbytes)

    def down(self, service: str) -> Toxic:
        """Disable the proxies: their connections are closed and new ones refused."""
        names = self._names(service, "down")
        undo: list[Any] = []
        for proxy in names:
            self._enable(proxy, False)
            undo.append(lambda proxy=proxy: self._enable(proxy, True))
        return Toxic(self, service, "down", undo)

    def _enable(self, proxy: str, enabled: bool) -> None:
        response = self.toxiproxy.api("POST", f"/proxies/{proxy}", {"enabled": enabled})
        if not response.ok:
            raise FaultError(
                f"aikernel_faults: {'enabling' if enabled else 'disabling'} proxy {proxy} "
                f"failed: HTTP {response.status}: {_http.reason(response)}"
            )

    def _non_negative(self, service: str, call: str, **values: int) -> None:
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FaultError(
                    f"aikernel_faults.{call}({service!r}): {key} must be a whole number >= 0, "
                    f"got {value!r}"
                )

    def clear(self, service: str | None = None) -> None:
        """Remove every toxic (of ``service``, or of all proxied services) and enable the
        proxies again."""
        for name, ports in self._proxies.items():
            if service is not None and name != service:
                continue
            for proxy, _port in ports.values():
                response = self.toxiproxy.api("GET", f"/proxies/{proxy}/toxics")
                for toxic in (response.json() or []) if response.ok else []:
                    self.toxiproxy.api("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")
                self._enable(proxy, True)

    def close(self) -> None:
        """Delete this test's proxies (their toxics and connections go with them)."""
        if "toxiproxy" not in self._stack:
            return
        for ports in self._proxies.values():
            for proxy, _port in ports.values():
                with contextlib.suppress(OSError):
                    self.toxiproxy.api("DELETE", f"/proxies/{proxy}")
        self._proxies.clear()
        self._objects.clear()


__all__ = ["KINDS", "NetworkFaults", "Toxic"]
