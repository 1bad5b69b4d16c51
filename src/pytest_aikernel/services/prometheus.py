"""Prometheus 2.47 with a configuration generated for the stack that runs.

It scrapes itself (job ``prometheus``), every service of the stack that has a metrics endpoint
(job = service name, by network alias), and the user's extra targets; a target on 127.0.0.1 or
localhost is the host that runs the tests, reached as ``host.docker.internal``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import _http
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from .base import HttpService, Service, StackContext, endpoint_entry

PORT = 9090
CONFIG = "/etc/prometheus/prometheus.yml"
HOST_ALIAS = "host.docker.internal"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SCRAPE_INTERVAL = "1s"


@dataclass(frozen=True)
class PrometheusService(HttpService, Faultable):
    """Prometheus of the stack: ``url``, instant queries and target checks over plain HTTP."""

    internal_port: int = PORT

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the ``data.result`` list of ``/api/v1/query``."""
        from urllib.parse import urlencode

        response = _http.request("GET", f"{self.url}/api/v1/query?{urlencode({'query': expr})}")
        data = response.json() or {}
        if not response.ok or data.get("status") != "success":
            raise ValueError(f"prometheus query {expr!r} failed: {_http.reason(response)}")
        return list(data["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active targets of ``/api/v1/targets``."""
        data = _http.request("GET", f"{self.url}/api/v1/targets").json() or {}
        return list(data.get("data", {}).get("activeTargets", []))

    def wait_for_target(self, job: str, timeout: float = 30.0) -> dict[str, Any]:
        """Return the first target of ``job`` once it is up; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            targets = self.targets()
            for target in targets:
                if target.get("labels", {}).get("job") == job and target.get("health") == "up":
                    return target
            seen = [
                f"{t.get('labels', {}).get('job')}={t.get('health')}"
                f"{' (' + t['lastError'] + ')' if t.get('lastError') else ''}"
                for t in targets
            ]
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"prometheus: job {job!r} not up after {timeout:.1f} s; targets: "
                    f"{', '.join(seen) or 'none'}"
                )
            time.sleep(0.2)


def scrape_config(ctx: StackContext) -> tuple[dict[str, Any], bool]:
    """The Prometheus configuration for this stack, and whether it scrapes the host."""
    from . import registry

    jobs: list[dict[str, Any]] = [
        {"job_name": "prometheus", "static_configs": [{"targets": [f"localhost:{PORT}"]}]}
    ]
    for name in sorted(ctx.services):
        endpoint = registry()[name].metrics(ctx)
        if endpoint is None:
            continue
        job: dict[str, Any] = {
            "job_name": name,
            "metrics_path": endpoint.path,
            "static_configs": [{"targets": [f"{name}:{endpoint.port}"]}],
        }
        if endpoint.params:
            job["params"] = {k: list(v) for k, v in endpoint.params.items()}
        if endpoint.bearer_token:
            job["authorization"] = {"type": "Bearer", "credentials": endpoint.bearer_token}
        jobs.append(job)
    uses_host = False
    for target in ctx.settings.prometheus_scrape:
        host = target.host
        if host in LOCAL_HOSTS:
            host, uses_host = HOST_ALIAS, True
        jobs.append(
            {
                "job_name": target.job,
                "metrics_path": target.path,
                "static_configs": [{"targets": [f"{host}:{target.port}"]}],
            }
        )
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
        },
        "scrape_configs": jobs,
    }
    return config, uses_host


class Prometheus(Service):
    name = "prometheus"
    shaped_by = ("prometheus_scrape",)
    default_image = "prom/prometheus:v2.47.2"
    reaches_others = True  # it scrapes the stack's services by alias
    ports = (PORT,)
    external_env = "AIKERNEL_PROMETHEUS_URL"
    external_default = "http://127.0.0.1:9090"
    ready_log = "Server is ready to receive web requests."
    fixture_doc = """Prometheus 2.47 scraping the aikernel stack every second (session scope).

    Returns a :class:`pytest_aikernel.PrometheusService`: ``url``, ``query(expr)`` (instant
    query, the result list) and ``wait_for_target(job, timeout)``. Jobs: ``prometheus``, each
    service of the stack with metrics (by name) and --aikernel-prometheus-scrape targets.
    """

    def container(self, ctx: StackContext) -> ContainerSpec:
        import yaml

        config, uses_host = scrape_config(ctx)
        return ContainerSpec(
            image=ctx.image(self.name),
            command=(
                f"--config.file={CONFIG}",
                "--storage.tsdb.path=/prometheus",
                "--web.enable-lifecycle",
            ),
            ports=(PORT,),
            files={CONFIG: (yaml.safe_dump(config, sort_keys=False).encode(), 0o644)},
            extra_hosts={HOST_ALIAS: "host-gateway"} if uses_host else {},
        )

    def on_stack_grew(self, ctx: StackContext, running: Running, added: frozenset[str]) -> None:
        """Scrape services started on demand too: rewrite the configuration and reload it."""
        import yaml

        config, _uses_host = scrape_config(ctx)
        content = yaml.safe_dump(config, sort_keys=False).encode()
        if ctx.put_file(self.name, CONFIG, content):
            url = f"http://{running.host}:{running.host_port(PORT)}/-/reload"
            _http.request("POST", url, timeout=10)

    def probe(self, ctx: StackContext, running: Running) -> None:
        response = _http.request(
            "GET", f"http://{running.host}:{running.host_port(PORT)}/-/ready", timeout=2
        )
        if not response.ok:
            raise RuntimeError(f"/-/ready: HTTP {response.status}")

    def expose(self, ctx: StackContext, running: Running) -> PrometheusService:
        return PrometheusService(
            host=running.host, port=running.host_port(PORT), internal_host=running.internal_host
        )

    def vault_entry(self, ctx: StackContext, running: Running) -> dict[str, Any]:
        return endpoint_entry(running, PORT)


SERVICES = (Prometheus,)
