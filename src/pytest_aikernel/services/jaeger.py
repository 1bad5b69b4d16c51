"""Jaeger all-in-one 1.50 with OTLP on, in-memory storage.

Readiness uses the admin health check (``GET :14269/``) of the 1.x all-in-one, which answers once
the collector's OTLP receivers accept spans (the query API can answer earlier).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .. import _http
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from .base import (
    ExternalTarget,
    MetricsEndpoint,
    Route,
    Service,
    StackContext,
    endpoint_entry,
    external_url,
)

UI = 16686
OTLP_GRPC = 4317
OTLP_HTTP = 4318
ADMIN = 14269


@dataclass(frozen=True)
class JaegerService(Faultable):
    """Jaeger of the stack: UI/query API and OTLP endpoints, host side and in-network."""

    host: str
    ui_port: int
    otlp_grpc_port: int
    otlp_http_port: int
    internal_host: str
    admin_port: int = ADMIN

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` for an OTLP gRPC exporter in the test process."""
        return f"http://{self.host}:{self.otlp_grpc_port}"

    @property
    def otlp_http_endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` (the exporter appends ``/v1/traces``)."""
        return f"http://{self.host}:{self.otlp_http_port}"

    @property
    def internal_ui_url(self) -> str:
        return f"http://{self.internal_host}:{UI}"

    @property
    def internal_otlp_grpc_endpoint(self) -> str:
        return f"http://{self.internal_host}:{OTLP_GRPC}"

    @property
    def internal_otlp_http_endpoint(self) -> str:
        return f"http://{self.internal_host}:{OTLP_HTTP}"

    def services(self) -> list[str]:
        """Service names Jaeger has traces of (query API)."""
        data = _http.request("GET", f"{self.ui_url}/api/services").json() or {}
        return list(data.get("data") or [])

    def traces(self, service: str, timeout: float = 10.0, limit: int = 100) -> list[dict[str, Any]]:
        """The traces ``service`` sent, waiting up to ``timeout`` s for at least one."""
        query = urlencode({"service": service, "limit": limit, "lookback": "1h"})
        deadline = time.monotonic() + timeout
        while True:
            response = _http.request("GET", f"{self.ui_url}/api/traces?{query}")
            traces = list((response.json() or {}).get("data") or []) if response.ok else []
            if traces:
                return traces
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"jaeger: no trace of service {service!r} after {timeout:.1f} s; services "
                    f"with traces: {', '.join(self.services()) or 'none'}"
                )
            time.sleep(0.1)


class Jaeger(Service):
    name = "jaeger"
    default_image = "jaegertracing/all-in-one:1.50"
    ports = (UI, OTLP_GRPC, OTLP_HTTP, ADMIN)
    external_env = "AIKERNEL_JAEGER_URL"
    external_default = "http://127.0.0.1:16686"

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        ui = external_url(env, self.external_env, self.external_default)
        grpc = external_url(env, "AIKERNEL_JAEGER_OTLP_GRPC", "http://127.0.0.1:4317")
        http = external_url(env, "AIKERNEL_JAEGER_OTLP_HTTP", "http://127.0.0.1:4318")
        admin = external_url(env, "AIKERNEL_JAEGER_ADMIN_URL", "http://127.0.0.1:14269")
        return ExternalTarget(
            host=str(ui.hostname),
            ports={
                UI: ui.port or UI,
                OTLP_GRPC: grpc.port or OTLP_GRPC,
                OTLP_HTTP: http.port or OTLP_HTTP,
                ADMIN: admin.port or ADMIN,
            },
        )

    def external_exports(self, obj: Any) -> dict[str, str]:
        return {
            self.external_env: obj.ui_url,
            "AIKERNEL_JAEGER_OTLP_GRPC": obj.otlp_grpc_endpoint,
            "AIKERNEL_JAEGER_OTLP_HTTP": obj.otlp_http_endpoint,
            "AIKERNEL_JAEGER_ADMIN_URL": f"http://{obj.host}:{obj.admin_port}",
        }

    def internal_exports(self, obj: Any) -> dict[str, str]:
        return {
            self.external_env: obj.internal_ui_url,
            "AIKERNEL_JAEGER_OTLP_GRPC": obj.internal_otlp_grpc_endpoint,
            "AIKERNEL_JAEGER_OTLP_HTTP": obj.internal_otlp_http_endpoint,
            "AIKERNEL_JAEGER_ADMIN_URL": f"http://{obj.internal_host}:{ADMIN}",
        }

    ready_log = "Query server started"
    fixture_doc = """Jaeger all-in-one 1.50 with OTLP enabled, in memory (session scope).

    Returns a :class:`pytest_aikernel.JaegerService`: ``ui_url``, ``otlp_grpc_endpoint``,
    ``otlp_http_endpoint``, their ``internal_*`` twins and ``traces(service, timeout)``.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            env={"COLLECTOR_OTLP_ENABLED": "true"},
            ports=(UI, OTLP_GRPC, OTLP_HTTP, ADMIN),
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        # the admin health check (1.x's :14269/): the query API can answer before the OTLP
        # receivers accept spans
        url = f"http://{running.host}:{running.host_port(ADMIN)}/"
        response = _http.request("GET", url, timeout=2)
        if not response.ok:
            raise RuntimeError(f"admin health {ADMIN}/: HTTP {response.status}")

    def metrics(self, ctx: StackContext) -> MetricsEndpoint:
        return MetricsEndpoint(ADMIN)

    def proxied(self, obj: Any, routes: Mapping[int, Route]) -> Any:
        import dataclasses

        # the in-network endpoints are fixed ports of the alias: only the host side is proxied
        return dataclasses.replace(
            obj,
            host=routes[UI].host,
            ui_port=routes[UI].port,
            otlp_grpc_port=routes[OTLP_GRPC].port,
            otlp_http_port=routes[OTLP_HTTP].port,
            admin_port=routes[ADMIN].port,
        )

    def expose(self, ctx: StackContext, running: Running) -> JaegerService:
        return JaegerService(
            host=running.host,
            ui_port=running.host_port(UI),
            otlp_grpc_port=running.host_port(OTLP_GRPC),
            otlp_http_port=running.host_port(OTLP_HTTP),
            internal_host=running.internal_host,
            admin_port=running.host_port(ADMIN),
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(
            running,
            UI,
            otlp_grpc_port=running.host_port(OTLP_GRPC),
            internal_otlp_grpc_port=OTLP_GRPC,
            otlp_http_port=running.host_port(OTLP_HTTP),
            internal_otlp_http_port=OTLP_HTTP,
        )


SERVICES = (Jaeger,)
