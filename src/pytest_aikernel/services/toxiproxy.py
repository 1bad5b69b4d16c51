"""Toxiproxy: a TCP proxy with faults ("toxics"), for network faults between a test (or a
container of the stack) and a service.

It joins the stack when a test asks for ``aikernel_faults`` (or ``aikernel_toxiproxy``). Proxies
are made per test, each listening on one of :data:`POOL` ports that are published on 127.0.0.1
when the container starts: the host side of a proxied service is ``127.0.0.1:<host port>``, its
in-network address ``toxiproxy:<pool port>``. The Toxiproxy server is the owner of a pool port:
creating a proxy on a port in use fails there, so processes sharing the stack never collide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import _http
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from .base import (
    ExternalTarget,
    HttpService,
    Service,
    StackContext,
    endpoint_entry,
    external_url,
)

API = 8474
#: first port of the proxies' pool (inside the container) and how many there are
POOL_START = 20000
POOL_SIZE = 16
POOL = tuple(range(POOL_START, POOL_START + POOL_SIZE))


@dataclass(frozen=True)
class ToxiproxyService(HttpService, Faultable):
    """Toxiproxy of the stack: its HTTP API (``url``) and the published pool of proxy ports."""

    internal_port: int = API
    #: pool port (in the container, and in-network) -> host port on 127.0.0.1
    pool: tuple[tuple[int, int], ...] = ()

    def host_port(self, pool_port: int) -> int:
        return dict(self.pool)[pool_port]

    def api(self, method: str, path: str, body: Any = None) -> _http.Response:
        """One request to Toxiproxy's HTTP API (``/proxies``, ``/reset``, ...)."""
        return _http.request(method, f"{self.url}{path}", body, timeout=10)


class Toxiproxy(Service):
    name = "toxiproxy"
    default_image = "ghcr.io/shopify/toxiproxy:2.12.0"
    reaches_others = True  # its proxies forward to the services by alias
    helper = True  # aikernel_faults or aikernel_toxiproxy bring it; "every service" does not
    ports = (API, *POOL)
    external_env = "AIKERNEL_TOXIPROXY_URL"
    external_default = "http://127.0.0.1:8474"
    ready_log = "HTTP server"
    fixture_doc = """Toxiproxy 2 on the stack network (session scope), for network faults.

    Returns a :class:`pytest_aikernel.ToxiproxyService` (``url`` of its HTTP API, ``api()``).
    Tests use it through ``aikernel_faults``, which makes a proxy per test and service.
    """

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        # an already running Toxiproxy: its API at the URL, the pool ports on the same host
        url = external_url(env, self.external_env, self.external_default)
        ports = {API: url.port or API, **{p: p for p in POOL}}
        return ExternalTarget(host=str(url.hostname), ports=ports)

    def container(self, ctx: StackContext) -> ContainerSpec:
        # the official image's entrypoint and command (-host=0.0.0.0): nothing to change
        return ContainerSpec(image=ctx.image(self.name), ports=self.ports)

    def probe(self, ctx: StackContext, running: Running) -> None:
        # /version answers plain text (2.5) or JSON (2.6+): only the status is read
        response = _http.request(
            "GET", f"http://{running.host}:{running.host_port(API)}/version", timeout=2
        )
        if not response.ok:
            raise RuntimeError(f"/version: HTTP {response.status}")

    def expose(self, ctx: StackContext, running: Running) -> ToxiproxyService:
        return ToxiproxyService(
            host=running.host,
            port=running.host_port(API),
            internal_host=running.internal_host,
            pool=tuple((p, running.host_port(p)) for p in POOL if p in running.ports),
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, API)


SERVICES = (Toxiproxy,)

__all__ = ["ToxiproxyService"]
