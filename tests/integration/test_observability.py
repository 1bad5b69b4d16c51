"""Prometheus and Jaeger through plain HTTP and OpenTelemetry; Grafana and Kibana on real images."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from pytest_aikernel import JaegerService, PrometheusService
from pytest_aikernel.services import image_for, registry
from pytest_aikernel.settings import Settings

from .conftest import image_present


@pytest.mark.aikernel_stack("prometheus", "vault", "jaeger")
def test_up_lists_the_stack_targets(aikernel_prometheus: PrometheusService, aikernel_stack) -> None:
    expected = {"prometheus"} | {
        name for name in aikernel_stack if registry()[name].metrics(aikernel_stack._ctx) is not None
    }
    assert {"vault", "jaeger"} <= expected
    # every job is up, jaeger's too: Jaeger 1.x serves its metrics on the admin port 14269
    for job in expected:
        aikernel_prometheus.wait_for_target(job, timeout=30)
    jobs = {r["metric"]["job"]: r["value"][1] for r in aikernel_prometheus.query("up")}
    assert set(jobs) >= expected
    assert {job: jobs[job] for job in expected} == dict.fromkeys(expected, "1")


def test_query_errors_name_the_expression(aikernel_prometheus: PrometheusService) -> None:
    with pytest.raises(ValueError, match=r"query 'up\(' failed"):
        aikernel_prometheus.query("up(")


def test_span_sent_over_otlp_is_found(aikernel_jaeger: JaegerService) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"aikernel-it-{uuid.uuid4().hex[:6]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{aikernel_jaeger.otlp_http_endpoint}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("it").start_as_current_span("catalog.lookup") as span:
        span.set_attribute("resource.id", "r-1")
    provider.shutdown()
    traces = aikernel_jaeger.traces(service, timeout=20)
    names = {s["operationName"] for t in traces for s in t["spans"]}
    assert names == {"catalog.lookup"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_extra_scrape_target_on_the_host_is_scraped(pytester: pytest.Pytester) -> None:
    port = free_port()
    pytester.makepyfile(
        f"""
import http.server, threading

class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"aikernel_it_hostapp_up 1\\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

def test_scraped(aikernel_prometheus):
    # the container reaches the host through the bridge gateway (host.docker.internal)
    server = http.server.HTTPServer(("0.0.0.0", {port}), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        aikernel_prometheus.wait_for_target("hostapp", timeout=30)
        result = aikernel_prometheus.query("aikernel_it_hostapp_up")
        assert [r["metric"]["job"] for r in result] == ["hostapp"]
    finally:
        server.shutdown()
"""
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--aikernel-prometheus-scrape=hostapp=127.0.0.1:{port}",
        timeout=300,
    )
    result.assert_outcomes(passed=1)


def _real_image(service: str) -> str:
    return image_for(service, Settings(images=_env_images()))


def _env_images() -> dict[str, str]:
    from pytest_aikernel.settings import env_name_for_image

    return {
        s: os.environ[env_name_for_image(s)]
        for s in registry()
        if env_name_for_image(s) in os.environ
    }


@pytest.mark.skipif(
    not image_present(_real_image("grafana")),
    reason=f"no Grafana image {_real_image('grafana')!r} in the local engine (no registry serves "
    "one here and no stand-in exists); provisioning is covered by tests/unit/test_specs.py",
)
def test_grafana_on_a_real_image(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
def test_grafana(aikernel_grafana):
    names = {d["name"]: d for d in aikernel_grafana.datasources()}
    assert set(names) == {"Prometheus"}
    assert names["Prometheus"]["isDefault"] is True
    assert names["Prometheus"]["url"] == "http://prometheus:9090"
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300).assert_outcomes(passed=1)


@pytest.mark.skipif(
    not image_present(_real_image("kibana")),
    reason=f"no Kibana image {_real_image('kibana')!r} in the local engine (no registry serves "
    "one here and no stand-in exists); its spec is covered by tests/unit/test_specs.py",
)
def test_kibana_on_a_real_image(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
from pytest_aikernel import _http

def test_kibana(aikernel_kibana):
    status = _http.request("GET", aikernel_kibana.url + "/api/status").json()
    assert status["status"]["overall"]["level"] == "available"
"""
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=600).assert_outcomes(passed=1)


def test_services_started_on_demand_are_scraped_too(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
def test_on_demand(aikernel_prometheus, request):
    assert "vault" not in {t["labels"]["job"] for t in aikernel_prometheus.targets()}
    request.getfixturevalue("aikernel_vault")  # not known at collection: started now
    aikernel_prometheus.wait_for_target("vault", timeout=30)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=1)
