"""Container specifications and generated configuration, checked without Docker.

Kibana and Grafana have no stand-in image here: these tests are what checks their wiring unless a
real image is present (tests/integration/test_observability.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pytest_aikernel.errors import ConfigError
from pytest_aikernel.runtime import Running
from pytest_aikernel.secrets import SecretStore
from pytest_aikernel.services import StackContext, closure, registry
from pytest_aikernel.services.elasticsearch import load_init
from pytest_aikernel.services.grafana import provisioning
from pytest_aikernel.services.prometheus import CONFIG, scrape_config
from pytest_aikernel.settings import ScrapeTarget, Settings


def ctx(services, **settings) -> StackContext:
    return StackContext(
        settings=Settings(**settings), secrets=SecretStore(), services=frozenset(services)
    )


def running(service: str, ports: dict[int, int]) -> Running:
    return Running(
        service=service,
        image="img",
        container_id="c" * 64,
        host="127.0.0.1",
        ports=ports,
        internal_host=service,
        started_at=0.0,
    )


def test_kibana_points_at_elasticsearch_and_starts_without_waiting_for_it() -> None:
    kibana = registry()["kibana"]
    assert kibana.depends_on == ()
    assert closure(["kibana"]) == {"kibana", "elasticsearch"}
    spec = kibana.container(ctx(["kibana", "elasticsearch"]))
    assert (
        spec.image
        == "docker.elastic.co/kibana/kibana:"
        + registry()["elasticsearch"].default_image.split(":")[1]
    )
    assert spec.env["ELASTICSEARCH_HOSTS"] == "http://elasticsearch:9200"
    assert spec.ports == (5601,)
    assert (
        kibana.status_url(running("kibana", {5601: 40001})) == "http://127.0.0.1:40001/api/status"
    )


def test_elasticsearch_env_follows_the_official_image_contract() -> None:
    spec = registry()["elasticsearch"].container(ctx(["elasticsearch"], elasticsearch_heap="384m"))
    assert spec.env["discovery.type"] == "single-node"
    assert spec.env["xpack.security.enabled"] == "false"
    assert spec.env["cluster.routing.allocation.disk.threshold_enabled"] == "false"
    # the heap first; --aikernel-jvm-tuning's options (tests/unit/test_jvm_tuning.py) after it
    assert spec.env["ES_JAVA_OPTS"].split()[:2] == ["-Xms384m", "-Xmx384m"]


def test_neo4j_auth_and_memory_settings() -> None:
    c = ctx(["neo4j"], neo4j_heap="300m", neo4j_pagecache="32m")
    spec = registry()["neo4j"].container(c)
    user, password = spec.env["NEO4J_AUTH"].split("/")
    assert user == "neo4j"
    assert password == c.secrets.get("neo4j.password") and len(password) >= 8
    assert spec.env["NEO4J_server_memory_heap_max__size"] == "300m"
    assert spec.env["NEO4J_server_memory_pagecache_size"] == "32m"


def test_kafka_advertises_its_alias_and_the_host_port_it_binds() -> None:
    c = ctx(["kafka", "zookeeper"])
    c.running["zookeeper"] = running("zookeeper", {2181: 40000})
    spec = registry()["kafka"].container(c)
    host_port = spec.host_ports[29092]
    assert spec.env["KAFKA_ADVERTISED_LISTENERS"] == (
        f"INTERNAL://kafka:9092,HOST://127.0.0.1:{host_port}"
    )
    assert spec.env["KAFKA_ZOOKEEPER_CONNECT"] == "zookeeper:2181"
    assert spec.env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


@pytest.mark.parametrize(
    ("services", "names"),
    [
        ({"prometheus", "grafana"}, ["Prometheus"]),
        ({"prometheus", "grafana", "jaeger"}, ["Prometheus", "Jaeger"]),
        (
            {"prometheus", "grafana", "elasticsearch", "jaeger"},
            ["Prometheus", "Elasticsearch", "Jaeger"],
        ),
    ],
)
def test_grafana_provisions_exactly_the_running_data_sources(services, names) -> None:
    data = provisioning(frozenset(services))
    assert [d["name"] for d in data["datasources"]] == names
    assert [d["isDefault"] for d in data["datasources"] if d.get("isDefault")] == [True]
    urls = {d["name"]: d["url"] for d in data["datasources"]}
    assert urls["Prometheus"] == "http://prometheus:9090"
    spec = registry()["grafana"].container(ctx(services))
    content, _mode = spec.files["/etc/grafana/provisioning/datasources/aikernel.yaml"]
    assert yaml.safe_load(content) == data
    assert spec.env["GF_SECURITY_ADMIN_PASSWORD"] not in ("admin", "aikernel_dev_password")


def test_grafana_requires_prometheus() -> None:
    assert closure(["grafana"]) == {"grafana", "prometheus"}


def test_prometheus_config_scrapes_itself_the_stack_and_host_targets() -> None:
    c = ctx(
        ["prometheus", "vault", "postgres", "jaeger", "grafana"],
        prometheus_scrape=(
            ScrapeTarget("api", "127.0.0.1", 8000),
            ScrapeTarget("other", "svc", 9, "/m"),
        ),
    )
    config, uses_host = scrape_config(c)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "vault", "jaeger", "grafana", "api", "other"}
    assert jobs["vault"]["static_configs"][0]["targets"] == ["vault:8200"]
    assert jobs["vault"]["params"] == {"format": ["prometheus"]}
    assert jobs["vault"]["authorization"]["credentials"] == c.secrets.get("vault.token")
    assert jobs["api"]["static_configs"][0]["targets"] == ["host.docker.internal:8000"]
    assert jobs["other"]["metrics_path"] == "/m"
    assert uses_host
    spec = registry()["prometheus"].container(c)
    assert spec.extra_hosts == {"host.docker.internal": "host-gateway"}
    assert yaml.safe_load(spec.files[CONFIG][0]) == config


def test_elasticsearch_init_file_checks(tmp_path: Path) -> None:
    good = tmp_path / "ok.json"
    good.write_text('{"indices": {"a": {}}}')
    assert load_init(good)["indices"] == {"a": {}}
    bad = tmp_path / "bad.json"
    bad.write_text('{"mappings": {}}')
    with pytest.raises(ConfigError, match=r"bad\.json.*unknown top-level key 'mappings'"):
        load_init(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_init(bad)
