"""Grafana 10 with data sources provisioned from the stack that runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from .. import _http
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from .base import (
    ExternalTarget,
    MaskedRepr,
    MetricsEndpoint,
    Service,
    StackContext,
    endpoint_entry,
    external_url,
)

PORT = 3000
USER = "admin"
PROVISIONING = "/etc/grafana/provisioning/datasources/aikernel.yaml"


@dataclass(frozen=True, repr=False)
class GrafanaService(MaskedRepr, Faultable):
    """Grafana of the stack: ``url`` and the generated admin credentials."""

    host: str
    port: int
    user: str
    password: str
    internal_host: str
    internal_port: int = PORT

    _secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://{self.internal_host}:{self.internal_port}"

    def datasources(self) -> list[dict[str, Any]]:
        """The data sources Grafana reports (``GET /api/datasources`` as admin)."""
        response = _http.request(
            "GET", f"{self.url}/api/datasources", auth=(self.user, self.password)
        )
        if not response.ok:
            raise RuntimeError(f"grafana /api/datasources: HTTP {response.status}")
        return list(response.json())


def provisioning(services: frozenset[str]) -> dict[str, Any]:
    """Grafana's datasource provisioning for a stack of ``services`` (by network alias)."""
    sources: list[dict[str, Any]] = []
    if "prometheus" in services:
        sources.append(
            {
                "name": "Prometheus",
                "uid": "aikernel-prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
                "editable": False,
            }
        )
    if "elasticsearch" in services:
        sources.append(
            {
                "name": "Elasticsearch",
                "uid": "aikernel-elasticsearch",
                "type": "elasticsearch",
                "access": "proxy",
                "url": "http://elasticsearch:9200",
                "editable": False,
                "jsonData": {"index": "logs-*", "timeField": "@timestamp"},
            }
        )
    if "jaeger" in services:
        sources.append(
            {
                "name": "Jaeger",
                "uid": "aikernel-jaeger",
                "type": "jaeger",
                "access": "proxy",
                "url": "http://jaeger:16686",
                "editable": False,
            }
        )
    return {"apiVersion": 1, "datasources": sources}


class Grafana(Service):
    name = "grafana"
    default_image = "grafana/grafana:10.2.3"
    reaches_others = True  # its data sources are the stack's services, by alias
    requires = ("prometheus",)
    ports = (PORT,)
    external_env = "AIKERNEL_GRAFANA_URL"
    external_default = "http://admin:aikernel_dev_password@127.0.0.1:3000"

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        url = external_url(env, self.external_env, self.external_default)
        return ExternalTarget(
            host=str(url.hostname),
            ports={PORT: url.port or PORT},
            secrets={"grafana.password": unquote(url.password or "")},
        )

    def external_exports(self, obj: Any) -> dict[str, str]:
        auth = f"{quote(obj.user, safe='')}:{quote(obj.password, safe='')}@"
        return {self.external_env: f"http://{auth}{obj.host}:{obj.port}"}

    ready_log = "HTTP Server Listen"
    fixture_doc = """Grafana 10 with data sources provisioned from the aikernel stack (session).

    Returns a :class:`pytest_aikernel.GrafanaService`: ``url``, ``user``, ``password`` and
    ``datasources()``. Prometheus (default), Elasticsearch (logs) and Jaeger (traces) are
    provisioned when they run, by network alias.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        import yaml

        content = yaml.safe_dump(provisioning(ctx.services), sort_keys=False).encode()
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "GF_SECURITY_ADMIN_USER": USER,
                "GF_SECURITY_ADMIN_PASSWORD": ctx.secrets.get("grafana.password"),
                "GF_ANALYTICS_REPORTING_ENABLED": "false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
                "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
                "GF_USERS_ALLOW_SIGN_UP": "false",
            },
            ports=(PORT,),
            files={PROVISIONING: (content, 0o644)},
        )

    def on_stack_grew(self, ctx: StackContext, running: Running, added: frozenset[str]) -> None:
        """Provision the data sources of services started on demand too, and reload them."""
        import yaml

        content = yaml.safe_dump(provisioning(ctx.services), sort_keys=False).encode()
        if ctx.put_file(self.name, PROVISIONING, content):
            base = f"http://{running.host}:{running.host_port(PORT)}"
            _http.request(
                "POST",
                f"{base}/api/admin/provisioning/datasources/reload",
                auth=(USER, ctx.secrets.get("grafana.password")),
                timeout=10,
            )

    @staticmethod
    def health_url(running: Running) -> str:
        return f"http://{running.host}:{running.host_port(PORT)}/api/health"

    def probe(self, ctx: StackContext, running: Running) -> None:
        response = _http.request("GET", self.health_url(running), timeout=2)
        if not response.ok or (response.json() or {}).get("database") != "ok":
            raise RuntimeError(f"/api/health: HTTP {response.status} {response.body[:200]!r}")

    def metrics(self, ctx: StackContext) -> MetricsEndpoint:
        return MetricsEndpoint(PORT)

    def expose(self, ctx: StackContext, running: Running) -> GrafanaService:
        return GrafanaService(
            host=running.host,
            port=running.host_port(PORT),
            user=USER,
            password=ctx.secrets.get("grafana.password"),
            internal_host=running.internal_host,
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(
            running, PORT, username=USER, password=ctx.secrets.get("grafana.password")
        )


SERVICES = (Grafana,)
